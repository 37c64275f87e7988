"""The worker's side of file loads and folder writes: read splits, exchange rows by key,
stage them; write this worker's part of a `COPY (query) TO 'folder/'`.

`read_files` reads this worker's splits (laminardb/files/read.py: the checks of `insert`),
keeps the rows it owns staged under the load's transaction, and writes the rows other workers
own to Arrow IPC segments in /dev/shm (a large part of a split gets one of its own, small parts
share one per owner; owner-only, named with the coordinator's prefix so its leak checks and
stale sweep see them). The coordinator then asks each owner to
`stage_segments`: it maps them, takes the rows and unlinks them. Rows never pass through the
coordinator, except for a logged load (`segment_all`), where every row goes to a segment and
the coordinator maps them to write the log record before the commit. On a failure here every
segment this call made is unlinked before the error is returned; the coordinator aborts the
transaction on every worker and unlinks what was listed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from laminardb.files.options import FileOptions
from laminardb.files.read import read_split
from laminardb.files.write import write_table
from laminardb.ingest import partition
from laminardb.wire import arrow_ipc, protocol
from laminardb.wire.arena import SHM_DIR
from laminardb.wire.protocol import FileSplit

Staged = dict[int, list[tuple[str, pa.Table]]]
# Segments this worker wrote, by transaction: an Abort unlinks them here, because the
# coordinator does not wait for this worker's reply before it gives up on a load (a sibling
# died), so its own sweep can run before this worker has written them.
_written: dict[int, list[str]] = {}

MIN_RANGE_ROWS = 250_000
"""Rows below which a range is not worth a thread of its own in the exchange."""

SEGMENT_ROWS = 65_536
"""Rows below which a split's part for another owner waits to share one segment with the
other small parts for that owner (a load of many small files makes few segments)."""

_T = TypeVar("_T")
_R = TypeVar("_R")


def read_files(
    r: protocol.ReadFiles, shard: int, staged: Staged, read_one: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Read, cast and place the rows of `r.splits`; returns rows read and segments written.
    `read_one(i)` is told, on this thread, as each split `i` is read (a load's progress).

    Each split (a Parquet row group, a text piece) is read, cut by owner and its other
    owners' rows written out on one thread, splits at once: the cut and the writes of one
    split overlap the reads of others, and a worker's few row groups of a few columns each
    (Arrow reads a row group a column a thread) no longer leave its cores idle."""
    clock = _Clock()
    schema = pa.ipc.read_schema(pa.py_buffer(r.schema))
    opts = FileOptions(r.format, bool(r.options["header"]), str(r.options["delimiter"]))
    cores = pa.cpu_count()  # this worker's share of the cores (1: siblings use the rest)
    threads = len(r.splits) < cores  # Arrow's threads too, when the splits do not fill them
    keyed = bool(r.keys) and r.workers > 1
    share = max(1, cores // max(1, len(r.splits)))  # the cut's threads, a split
    written: list[str] = []  # by every split's thread: unlinked if any split fails
    footers: dict[str, Any] = {}  # each Parquet file's footer, parsed once
    spent = {"read": 0.0, "exchange": 0.0, "write": 0.0}  # thread seconds, for the DEBUG log
    lock = threading.Lock()

    def add(step: str, began: float) -> None:
        with lock:
            spent[step] += time.perf_counter() - began

    def place(split: FileSplit) -> _Placed:
        began = time.perf_counter()
        table = read_split(split, opts, schema, r.source, threads, footers)
        add("read", began)
        if not table.num_rows or not (keyed or r.segment_all):
            return _Placed(table, table.num_rows)
        began = time.perf_counter()
        if keyed:
            parts = by_owner_parallel(table, r.keys, r.workers, share)
        else:
            parts = [table if dest == shard else table.slice(0, 0) for dest in range(r.workers)]
        add("exchange", began)
        began = time.perf_counter()
        placed = _Placed(None, table.num_rows)
        for dest, part in enumerate(parts):
            if not part.num_rows:
                continue
            if dest == shard and not r.segment_all:
                placed.own = part
                continue
            if part.num_rows < SEGMENT_ROWS:
                placed.held[dest] = part  # small: joins the others' in one segment at the end
            else:
                placed.segments.append([dest, segment(dest, part)])
        add("write", began)
        return placed

    def segment(dest: int, part: pa.Table) -> str:
        name = f"{r.prefix}x{r.txn}-{shard}to{dest}-{secrets.token_hex(4)}"
        written.append(name)
        _written.setdefault(r.txn, []).append(name)
        _write_segment(name, part)
        return name

    try:
        placed = list(_map(place, r.splits, cores, read_one))
        held: dict[int, list[pa.Table]] = {}
        for p in placed:
            for dest, part in p.held.items():
                held.setdefault(dest, []).append(part)
        joined = [(dest, pa.concat_tables(parts)) for dest, parts in sorted(held.items())]
        names = _map(lambda w: segment(*w), joined, cores)
        tail = [[dest, name] for (dest, _), name in zip(joined, names, strict=True)]
    except BaseException:
        unlink(written)
        staged.pop(r.txn, None)
        raise
    clock.lap("wall")
    own = [p.own for p in placed if p.own is not None and p.own.num_rows]
    if own:
        staged.setdefault(r.txn, []).append(
            (r.source, pa.concat_tables(own) if len(own) > 1 else own[0])
        )
    timings = {**clock.laps, **{k: round(v, 4) for k, v in spent.items()}}
    return {
        "rows": sum(p.rows for p in placed),
        "segments": [seg for p in placed for seg in p.segments] + tail,
        "timings": timings,
    }


@dataclass
class _Placed:
    """One split's rows: those this worker keeps, and the segments it wrote for others."""

    own: pa.Table | None
    rows: int
    segments: list[list[Any]] = field(default_factory=list)
    held: dict[int, pa.Table] = field(default_factory=dict)
    """Parts for other owners too small for a segment of their own (`SEGMENT_ROWS`)."""


def end(txn: int, aborted: bool) -> None:
    """Transaction `txn` is over: on an abort, unlink what this worker wrote for it that no
    owner staged (its owner may never be asked to)."""
    names = _written.pop(txn, [])
    if aborted:
        unlink(names)


def stage_segments(r: protocol.StageSegments, staged: Staged) -> int:
    """Take the rows of each segment under `r.txn`, unlinking them.

    The rows are not copied: the table stays over the mapping of the segment (its pages
    live, nameless, until the commit's insert has made its own batch of them or the
    transaction is dropped). The writer made the segment once and never touches it again.
    The IPC stream aligns buffers to 8 bytes only, which the engine's Arrow import rejects
    (a panic that ends the worker) for 16-byte values (decimals, month-day-nano intervals):
    a segment holding such a column is read into freshly allocated, 64-byte aligned memory
    (Arrow's `DataTypeSpecific` alignment does not cover decimals, tried)."""
    rows = 0
    try:
        for name in r.names:
            path = os.path.join(SHM_DIR, name)
            with pa.memory_map(path) as mapped:  # the table's buffers keep the pages mapped
                reader = pa.ipc.open_stream(mapped)
                if any(arrow_ipc.wide(f.type) for f in reader.schema):
                    mapped.seek(0)
                    reader = pa.ipc.open_stream(mapped, options=arrow_ipc.ALIGNED)
                table = reader.read_all()
            os.unlink(path)
            staged.setdefault(r.txn, []).append((r.source, table))
            rows += table.num_rows
    finally:
        unlink(r.names)
    return rows


def write_query(r: protocol.WriteQuery, table: pa.Table) -> int:
    """Write this worker's answer to a plain per-worker query to its part file `r.path`."""
    opts = FileOptions(r.format, bool(r.options["header"]), str(r.options["delimiter"]))
    return write_table(table, r.path, opts)


def by_owner(table: pa.Table, keys: list[str], workers: int) -> list[pa.Table]:
    """`table` cut by owning worker, exactly as `partition.split` cuts it (same owners, input
    order kept inside a part), with one take per owner, each into buffers of its own: a part
    kept by this worker for the engine must not hold the rows sent to the others alive (as
    slices of one reordered table, a 10M-row keyed load left each worker holding every row
    it read, about 1.5x what it owns). An owner's row numbers are found by one comparison
    pass, not a sort: 2 ms for 1M rows and 2 owners against 20 ms for a stable argsort."""
    owners = partition.vshards(table, keys) % np.uint16(workers)
    parts = []
    for owner in range(workers):
        rows = np.flatnonzero(owners == owner)
        parts.append(table.take(pa.array(rows)) if len(rows) else table.slice(0, 0))
    return parts


def by_owner_parallel(table: pa.Table, keys: list[str], workers: int, cores: int) -> list[pa.Table]:
    """`by_owner` over row ranges of `table` on up to `cores` threads (the hash, the sort and
    the take release the GIL), the ranges' parts joined per owner in input order: the same
    parts as `by_owner`, each of up to `cores` chunks."""
    ranges = min(cores, table.num_rows // MIN_RANGE_ROWS)
    if ranges < 2:
        return by_owner(table, keys, workers)
    step = -(-table.num_rows // ranges)
    pieces = [table.slice(start, step) for start in range(0, table.num_rows, step)]
    cut = list(_map(lambda piece: by_owner(piece, keys, workers), pieces, cores))
    return [pa.concat_tables([parts[dest] for parts in cut]) for dest in range(workers)]


def _map(
    fn: Callable[[_T], _R],
    items: Sequence[_T],
    cores: int,
    finished: Callable[[int], None] | None = None,
) -> Iterator[_R]:
    """`map(fn, items)`, in order, on up to `cores` threads when there is more than one
    item; `finished(i)` is called on the calling thread as item `i` is done. Of several
    failures, the first item's is raised (the first bad row group or line of a file)."""
    if cores < 2 or len(items) < 2:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if finished is not None:
                finished(i)
        return iter(out)
    with ThreadPoolExecutor(min(cores, len(items))) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            if finished is not None and future.exception() is None:
                finished(futures[future])
    return iter([f.result() for f in futures])  # the first failure in item order


def _write_segment(name: str, table: pa.Table) -> None:
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


class _Clock:
    """Seconds per step of one request, for the coordinator's DEBUG log of a load."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now


def unlink(names: list[str]) -> None:
    """Remove segments by name; ones already gone are fine."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
