"""Import the file readers and writers in the background while the worker is idle.

The first `load()`, `COPY` or folder write on a fresh worker used to pay about half a second
of one-off imports (pyarrow's CSV, JSON and Parquet modules, sqlglot for the writer's
options, our own readers) on top of its work, in each worker. A daemon thread imports them
after start-up instead, one module at a time and only once the request loop has been
waiting a moment (`FIRST_QUIET_S`, then `QUIET_S`), so a request that is being served is
not slowed by an import started for it (one already running finishes first: at most one
module's import). A module that fails to import is skipped: the request that needs it
raises the error.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time

log = logging.getLogger("laminardb.worker")

FIRST_QUIET_S = 0.25
"""How long the request loop must have been waiting before the first import: a cluster
opened for a few quick requests and closed (tests, scripts) never pays for the imports."""

QUIET_S = 0.02
"""How long the request loop must have been waiting before each further module is imported."""

MODULES = (
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.json",
    "pyarrow.parquet",
    "sqlglot",
    "laminardb.ingest.cast",
    "laminardb.ingest.convert",
    "laminardb.ingest.partition",
    "laminardb.files.options",
    "laminardb.files.splits",
    "laminardb.files.read",
    "laminardb.files.write",
)
"""What a file request imports, leaves first (each import is short and finds its parts).
Not `workers.files` itself (a few ms once these are in): the request loop looks it up in
`sys.modules`, where a module being imported appears before it is complete."""

PARQUET_MODULES = ("polars",)
"""Imported once the worker has served its first Parquet load, when it is quiet again: its
later Parquet loads decode with polars (laminardb/files/polars_read.py). Not at start-up: a
worker that never reads Parquet does not carry it (about 30 MB, 0.35 s to import)."""


class Idle:
    """Whether the request loop waits for a request, and since when (set by the loop)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._since = time.monotonic()
        self.stop = threading.Event()

    def enter(self) -> None:
        """The loop is about to wait for a request."""
        self._since = time.monotonic()
        self._event.set()

    def leave(self) -> None:
        """The loop got a request and serves it."""
        self._event.clear()

    def wait_quiet(self, quiet_s: float) -> bool:
        """Block until the loop has waited `quiet_s` without a request; False once stopped."""
        while not self.stop.is_set():
            if not self._event.wait(0.5):
                continue
            left = self._since + quiet_s - time.monotonic()
            if left <= 0 and self._event.is_set():
                return True
            self.stop.wait(max(left, 0.001))
        return False


def start(idle: Idle, modules: tuple[str, ...] = MODULES) -> threading.Thread:
    """Start the daemon thread that imports `modules` whenever `idle` is quiet."""
    thread = threading.Thread(
        target=_run, args=(idle, modules), name="laminardb-preload", daemon=True
    )
    thread.start()
    return thread


def _run(idle: Idle, modules: tuple[str, ...]) -> None:
    for i, name in enumerate(modules):
        if not idle.wait_quiet(FIRST_QUIET_S if i == 0 else QUIET_S):
            return
        try:
            importlib.import_module(name)
        except Exception as exc:  # the request that needs it raises it
            log.debug("preload of %s failed: %s", name, exc)
