"""The worker's side of a file load: read splits, exchange rows by key, stage them.

`read_files` reads this worker's splits (laminardb/files/read.py: the checks of `insert`),
keeps the rows it owns staged under the load's transaction, and writes the rows other workers
own to one Arrow IPC segment per owner in /dev/shm (owner-only, named with the coordinator's
prefix so its leak checks and stale sweep see them). The coordinator then asks each owner to
`stage_segments`: it maps them, takes the rows and unlinks them. Rows never pass through the
coordinator. On a failure here every segment this call made is unlinked before the error is
returned; the coordinator aborts the transaction on every worker and unlinks what was listed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

import numpy as np
import pyarrow as pa

from laminardb.files.options import FileOptions
from laminardb.files.read import read_split
from laminardb.ingest import partition
from laminardb.wire import arrow_ipc, protocol
from laminardb.wire.arena import SHM_DIR

Staged = dict[int, list[tuple[str, pa.Table]]]


def read_files(r: protocol.ReadFiles, shard: int, staged: Staged) -> dict[str, Any]:
    """Read, cast and place the rows of `r.splits`; returns rows read and segments written."""
    schema = pa.ipc.read_schema(pa.py_buffer(r.schema))
    opts = FileOptions(r.format, bool(r.options["header"]), str(r.options["delimiter"]))
    tables = [read_split(split, opts, schema, r.source) for split in r.splits]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return {"rows": 0, "segments": []}
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    rows = int(table.num_rows)
    if not r.keys or r.workers == 1:
        staged.setdefault(r.txn, []).append((r.source, table))
        return {"rows": rows, "segments": []}
    parts = by_owner(table, r.keys, r.workers)
    segments: list[list[Any]] = []
    try:
        for dest, part in enumerate(parts):
            if not part.num_rows:
                continue
            if dest == shard:
                staged.setdefault(r.txn, []).append((r.source, part))
                continue
            name = f"{r.prefix}x{r.txn}-{shard}to{dest}-{secrets.token_hex(4)}"
            segments.append([dest, name])
            _write_segment(name, part)
    except BaseException:
        unlink([name for _, name in segments])
        staged.pop(r.txn, None)
        raise
    return {"rows": rows, "segments": segments}


def stage_segments(r: protocol.StageSegments, staged: Staged) -> int:
    """Take the rows of each segment into this worker's memory under `r.txn`, unlinking them."""
    rows = 0
    try:
        for name in r.names:
            path = os.path.join(SHM_DIR, name)
            with pa.memory_map(path) as mapped:
                table = arrow_ipc.copy_out(memoryview(mapped.read_buffer()))
            os.unlink(path)
            staged.setdefault(r.txn, []).append((r.source, table))
            rows += table.num_rows
    finally:
        unlink(r.names)
    return rows


def by_owner(table: pa.Table, keys: list[str], workers: int) -> list[pa.Table]:
    """`table` cut by owning worker, exactly as `partition.split` cuts it (same owners, input
    order kept inside a part), but with one sort and one take instead of a take per worker
    over many chunks: the parts are slices of one reordered table."""
    owners = partition.vshards(table, keys) % np.uint16(workers)
    order = np.argsort(owners, kind="stable")
    counts = np.bincount(owners, minlength=workers)
    ordered = table.combine_chunks().take(pa.array(order))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [ordered.slice(int(s), int(c)) for s, c in zip(starts, counts, strict=True)]


def _write_segment(name: str, table: pa.Table) -> None:
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def unlink(names: list[str]) -> None:
    """Remove segments by name; ones already gone are fine."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
