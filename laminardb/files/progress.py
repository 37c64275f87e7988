"""Progress of a file load, for whoever watches it (the CLI's progress bar, a `progress=`
callback): the bytes of input the workers have read, then the commit.

The watcher is set per thread of control (a context variable), so the service can route
each client's reports to that client while other calls run beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

from laminardb.wire.protocol import FileSplit

Report = Callable[[str, int, int], None]
"""(phase, bytes done, bytes in all): phase is "read" or "commit"."""

_watcher: ContextVar[Report | None] = ContextVar("laminardb_load_progress", default=None)
log = logging.getLogger("laminardb.files")


def check(report: object) -> None:
    """A `TypeError` for a watcher that cannot be called (found before the load starts)."""
    if report is not None and not callable(report):
        raise TypeError(
            f"progress must be a callable (phase, done, total) or None, not {type(report).__name__}"
        )


@contextlib.contextmanager
def watching(report: Report | None) -> Iterator[None]:
    """Send the progress of loads run inside this block to `report` (None: to nobody new)."""
    check(report)
    if report is None:
        yield
        return
    token = _watcher.set(report)
    try:
        yield
    finally:
        _watcher.reset(token)


def report(phase: str, done: int, total: int) -> None:
    """Tell the watcher, if any; a failing watcher never fails the load."""
    watcher = _watcher.get()
    if watcher is None:
        return
    try:
        watcher(phase, done, total)
    except Exception as exc:
        log.warning("load progress watcher failed: %s", exc)


def split_bytes(shares: Sequence[Sequence[FileSplit]]) -> list[list[int]]:
    """Input bytes of each split of each worker's share: a byte range's length, a whole
    file's size, a Parquet file's size split evenly over its row groups."""
    groups: dict[str, int] = {}
    for share in shares:
        for split in share:
            if split.row_groups:
                groups[split.path] = groups.get(split.path, 0) + len(split.row_groups)
    sizes: dict[str, int] = {}

    def size(path: str) -> int:
        if path not in sizes:
            sizes[path] = os.path.getsize(path)
        return sizes[path]

    counted: dict[str, int] = {}  # row groups of each file already given a part of its size
    out = []
    for share in shares:
        weights = []
        for split in share:
            if split.row_groups:
                before = counted.get(split.path, 0)
                counted[split.path] = after = before + len(split.row_groups)
                whole, of = size(split.path), groups[split.path]
                weights.append(whole * after // of - whole * before // of)  # sums to the size
            elif split.end > split.start >= 0:
                weights.append(split.end - split.start)
            else:
                weights.append(size(split.path) - max(0, split.start))
        out.append(weights)
    return out
