"""What is observed around a timed section: CPU and RSS per process, shared-memory bytes.

`Probe` wraps one timed section. It samples every process of the target (the benchmark's
own process, which is the coordinator, plus each worker from `conn.workers()`) with psutil
in a background thread, and counts the bytes the coordinator serialised into the workers'
shared-memory arenas by wrapping the router's one write function for the duration.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from importlib import metadata
from typing import Any

import psutil

from benchmarks.harness.model import ProcessStat

SAMPLE_S = 0.2


def machine() -> dict[str, Any]:
    """Cores, memory and versions: what a figure from another run must be compared with."""
    versions: dict[str, str | None] = {}
    for dist in (
        "laminardb-cluster",
        "laminardb-native",
        "pyarrow",
        "pyzmq",
        "msgspec",
        "duckdb",
        "polars",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    freq = psutil.cpu_freq()
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "cpu_mhz": freq.max or freq.current if freq else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }


class _Sampler(threading.Thread):
    """Peak RSS of each watched process, sampled until stopped."""

    def __init__(self, procs: dict[str, psutil.Process]):
        super().__init__(name="bench-rss-sampler", daemon=True)
        self.procs = procs
        self.peak = dict.fromkeys(procs, 0)
        self.stop = threading.Event()

    def sample(self) -> None:
        for role, proc in self.procs.items():
            with suppress(psutil.Error):
                self.peak[role] = max(self.peak[role], proc.memory_info().rss)

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.sample()


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


class ShmCounter:
    """Bytes written into worker arenas by the coordinator's router while installed."""

    def __init__(self) -> None:
        self.bytes = 0
        self.available = False

    @contextmanager
    def installed(self) -> Iterator[ShmCounter]:
        try:
            from laminardb.ingest import router
        except ImportError:
            yield self
            return
        original: Callable[..., Any] | None = getattr(router, "_write_next", None)
        if original is None:
            yield self
            return
        self.available = True

        def counting(queue: Any, view: Any) -> Any:
            length, inline = original(queue, view)
            self.bytes += length if inline is None else inline.size
            return length, inline

        router._write_next = counting
        try:
            yield self
        finally:
            router._write_next = original


class Probe:
    """Measures one timed section: wall time, per-process CPU %, peak RSS, shm bytes."""

    def __init__(self, conn: Any = None):
        procs = {"coordinator": psutil.Process()}
        workers = getattr(conn, "workers", None)
        self.cluster = callable(workers)
        if callable(workers):
            for w in workers():
                with suppress(psutil.Error):
                    procs[f"worker {w.shard}"] = psutil.Process(w.pid)
        self.procs = procs
        self.seconds = 0.0
        self.stats: list[ProcessStat] = []
        self.shm = ShmCounter()

    @contextmanager
    def timed(self) -> Iterator[Probe]:
        sampler = _Sampler(self.procs)
        sampler.sample()
        cpu0 = {role: _cpu(p) for role, p in self.procs.items()}
        sampler.start()
        started = time.perf_counter()
        try:
            with self.shm.installed() if self.cluster else nullcontext(self.shm):
                yield self
        finally:
            self.seconds = time.perf_counter() - started
            sampler.stop.set()
            sampler.join()
            sampler.sample()
            wall = max(self.seconds, 1e-9)
            self.stats = [
                ProcessStat(
                    role=role,
                    pid=p.pid,
                    cpu_percent=100.0 * (_cpu(p) - cpu0[role]) / wall,
                    rss_bytes=sampler.peak[role],
                )
                for role, p in self.procs.items()
            ]

    @property
    def shm_bytes(self) -> int | None:
        return self.shm.bytes if self.shm.available else None
