"""Where the coordinator's time goes: a sampling profiler with cost buckets.

A background thread looks at every thread's Python stack (`sys._current_frames`) every few
milliseconds while a cluster section runs. The main thread (the caller of `insert`/`sql`)
is sampled whatever it does: its waiting is the user's latency. Other threads (the flusher
that ships coalesced inserts, the stream receiver) are sampled only when their own CPU clock
advanced since the last look, so an idle thread blocked in ZeroMQ or a condition variable
counts nothing. Each sample is put in one bucket by walking its stack from the innermost
frame outwards and taking the first frame a rule recognises (`classify`, pure), so a pyarrow
kernel called from the casting code counts as casting.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

HASHING = "hashing"
CASTING = "casting/validation"
SERIALISING = "serialising (IPC)"
WAITING = "waiting on workers"
RESULTS = "waiting for stream results"
PLANNING = "query planning/merge"
OTHER = "other"
BUCKETS = (HASHING, CASTING, SERIALISING, WAITING, RESULTS, PLANNING, OTHER)

# (path fragment, function name or None for any, bucket): first match from the innermost frame.
RULES: tuple[tuple[str, str | None, str], ...] = (
    ("laminardb/ingest/partition.py", None, HASHING),
    ("laminardb/ingest/xxh3.py", None, HASHING),
    ("xxhash", None, HASHING),
    ("laminardb/ingest/cast.py", None, CASTING),
    ("laminardb/ingest/convert.py", None, CASTING),
    ("laminardb/wire/arrow_ipc.py", None, SERIALISING),
    ("laminardb/wire/arena.py", None, SERIALISING),
    ("laminardb/wire/protocol.py", None, SERIALISING),
    ("laminardb/ingest/router.py", "_write_next", SERIALISING),
    ("laminardb/ingest/router.py", "_chunks", SERIALISING),
    ("laminardb/cluster/supervisor.py", None, WAITING),
    ("laminardb/streams/feed.py", "get", RESULTS),
    ("laminardb/api/subscriptions.py", "next_timeout", RESULTS),
    ("laminardb/api/subscriptions.py", "next", RESULTS),
    ("laminardb/plan/", None, PLANNING),
)

SAMPLE_S = 0.002


def classify(stack: Sequence[tuple[str, str]]) -> str:
    """The bucket of one sample; `stack` is (filename, function) pairs, innermost first."""
    for filename, func in stack:
        path = filename.replace("\\", "/")
        for fragment, name, bucket in RULES:
            if fragment in path and (name is None or name == func):
                return bucket
    return OTHER


def where(stack: Sequence[tuple[str, str]]) -> str:
    """The innermost frame of ours (laminardb/) as `module.py:function`, followed by the
    nearest caller of ours in another module (`<- caller.py:function`) so that a wait says
    what it waits for; the innermost frame when none is ours."""
    ours = []
    for filename, func in stack:
        path = filename.replace("\\", "/")
        if "/laminardb/" in path:
            ours.append((path.split("/laminardb/", 1)[1], func))
    if not ours:
        filename, func = stack[0] if stack else ("?", "?")
        return f"{filename.rsplit('/', 1)[-1]}:{func}"
    module, func = ours[0]
    caller = next((f"{m}:{f}" for m, f in ours[1:] if m != module), None)
    return f"{module}:{func}" + (f" <- {caller}" if caller else "")


def _stack(frame: FrameType | None) -> list[tuple[str, str]]:
    out = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return out


def _thread_cpu(ident: int) -> float | None:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError, ValueError):
        return None


class Profile:
    """Bucket and function sample counts, accumulated over any number of sections."""

    def __init__(self) -> None:
        self.buckets: Counter[str] = Counter()
        self.functions: Counter[str] = Counter()
        self.samples = 0

    def add(self, stack: Sequence[tuple[str, str]]) -> None:
        self.buckets[classify(stack)] += 1
        self.functions[where(stack)] += 1
        self.samples += 1

    def merge(self, other: Profile) -> None:
        self.buckets.update(other.buckets)
        self.functions.update(other.functions)
        self.samples += other.samples

    def summary(self, top: int = 10) -> dict[str, Any]:
        total = max(self.samples, 1)
        return {
            "samples": self.samples,
            "sample_interval_s": SAMPLE_S,
            "buckets": {b: self.buckets.get(b, 0) / total for b in BUCKETS},
            "top_functions": [
                {"where": name, "share": n / total} for name, n in self.functions.most_common(top)
            ],
        }

    @contextmanager
    def sampling(self) -> Iterator[Profile]:
        """Sample every thread of this process while the block runs."""
        stop = threading.Event()
        main = threading.main_thread().ident
        me: list[int] = []

        def loop() -> None:
            me.append(threading.get_ident())
            last_cpu: dict[int, float | None] = {}
            while not stop.wait(SAMPLE_S):
                for ident, frame in sys._current_frames().items():
                    if ident in me:
                        continue
                    cpu = _thread_cpu(ident)
                    before = last_cpu.get(ident)
                    last_cpu[ident] = cpu
                    if ident != main:
                        busy = (
                            cpu is not None and before is not None and cpu - before > SAMPLE_S / 4
                        )
                        if not busy:
                            continue
                    self.add(_stack(frame))

        sampler = threading.Thread(target=loop, name="bench-profiler", daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            stop.set()
            sampler.join()
