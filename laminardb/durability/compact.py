"""Log compaction: rewrite the log without what can never matter again, crash-safe.

The log (laminardb/durability/log.py) grows with every row ever inserted. `checkpoint()`
rewrites it, keeping the catalog and the retained rows of every source:

* the rows (and watermarks) of a source or table that a later `DROP` removed are left out
  (the engine refuses to drop a source that a stream still reads, so they can no longer
  reach any answer);
* runs of adjacent batches of one source that went to the workers the same way (by the
  same key, or whole to the same worker) become one record (one Arrow IPC stream: one
  schema and one header instead of many), up to `MERGE_BYTES` of rows per record;
* every statement and every other record is kept, in the same order, so replaying the new
  log (on reopen, or to rebuild a restarted worker) gives exactly what the old one gave.

Each new record keeps the placement of the batches it came from, so a worker restarted
after the compaction is rebuilt with the same rows as before.

Crash safety: the new log is written to `log.compact` next to the log and fsynced, then
renamed over the log (atomic), then the folder is fsynced. A crash before the rename
leaves the old log whole (the stale `log.compact` is removed by the next open); a crash
after it leaves the new log whole. `STEP_HOOK` is called after each step (tests inject a
crash there).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from laminardb.durability.log import COMPACT_NAME, Log, Record, RecordRef, RecordType, encode_head
from laminardb.plan import statements
from laminardb.plan.statements import ObjectKind, StatementKind
from laminardb.wire import arrow_ipc

MERGE_BYTES = 64 << 20
STEP_HOOK: Callable[[str], None] | None = None  # called with "written", "renamed", "synced"


@dataclass
class Item:
    """One record of the compacted log: its type, source, payload and batch placement."""

    type: RecordType
    source: str
    payload: bytes
    placement: Any = None


def plan(records: list[tuple[RecordRef, Record]]) -> list[Item]:
    """The records of the compacted log, in order (pure: no I/O)."""
    dropped_at = _drops(records)
    out: list[Item] = []
    pending: list[pa.Table] = []  # batches merged into out[-1]
    pending_bytes = 0

    def seal() -> None:
        nonlocal pending, pending_bytes
        if len(pending) > 1:
            out[-1].payload = bytes(arrow_ipc.dumps(pa.concat_tables(pending)))
        pending, pending_bytes = [], 0

    for index, (ref, record) in enumerate(records):
        if record.type is not RecordType.DDL and index < dropped_at.get(record.source, -1):
            continue  # rows (or a watermark) of something dropped later
        if record.type is not RecordType.BATCH:
            seal()
            out.append(Item(record.type, record.source, record.payload, ref.placement))
            continue
        last = out[-1] if out else None
        size = len(record.payload)
        if (
            pending
            and last is not None
            and last.type is RecordType.BATCH
            and last.source == record.source
            and _mergeable(last.placement, ref.placement)
            and pending_bytes + size <= MERGE_BYTES
        ):
            pending.append(record.table())
            pending_bytes += size
            continue
        seal()
        out.append(Item(RecordType.BATCH, record.source, record.payload, ref.placement))
        pending, pending_bytes = [record.table()], size
    seal()
    return out


def _drops(records: list[tuple[RecordRef, Record]]) -> dict[str, int]:
    """Per source or table name: the index of the last statement that dropped it."""
    last: dict[str, int] = {}
    for index, (_, record) in enumerate(records):
        if record.type is not RecordType.DDL:
            continue
        stmt = statements.classify(record.sql)
        if stmt.kind is StatementKind.DROP and stmt.drop_kind in (
            ObjectKind.SOURCE,
            ObjectKind.TABLE,
        ):
            for name in {stmt.name, stmt.raw_name} - {None}:
                last[str(name)] = index
    return last


def _mergeable(a: Any, b: Any) -> bool:
    """Whether two batches' rows went to the workers the same way, whatever their content
    (hashed by the same key, or whole to one worker; even slices depend on the row count)."""
    if a is None or b is None or a != b:
        return False
    return bool(getattr(a, "keys", ())) or getattr(a, "shard", None) is not None


def maybe_run(log_: Log) -> tuple[int, int] | None:
    """Compact `log_` when that leaves something out or merges something (decided from the
    record index and the statements alone, without reading the rows); None when not."""
    refs = log_.refs
    for a, b in itertools.pairwise(refs):
        if (
            a.type is b.type is RecordType.BATCH
            and a.source == b.source
            and _mergeable(a.placement, b.placement)
        ):
            return run(log_)
    ddl = [(i, ref) for i, ref in enumerate(refs) if ref.type is RecordType.DDL]
    records = list(log_.read([ref for _, ref in ddl]))
    dropped_at = _drops(records)
    positions = {k: ddl[i][0] for k, i in dropped_at.items()}
    if any(
        ref.type is not RecordType.DDL and i < positions.get(ref.source, -1)
        for i, ref in enumerate(refs)
    ):
        return run(log_)
    return None


def run(log_: Log) -> tuple[int, int]:
    """Compact `log_` in place (caller holds the connection's lock); returns the log's size
    before and after. Placements are carried over, so restarts stay exact."""
    before = log_.size
    items = plan(list(log_.read(list(log_.refs))))
    offsets = write(log_.dir, log_.file_path, items)
    refs = [
        RecordRef(offset, item.type, item.source, item.placement)
        for offset, item in zip(offsets[:-1], items, strict=True)
    ]
    log_.adopt(refs, offsets[-1])
    return before, offsets[-1]


def write(directory: str, target: str, items: list[Item]) -> list[int]:
    """Write `items` to a new file and put it in place of `target` (crash-safe, see above).
    Returns the offset of each item, then the new file's size."""
    temp = os.path.join(directory, COMPACT_NAME)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    offsets = [0]
    try:
        for item in items:
            head = encode_head(item.type, item.source, item.payload)
            for part in (memoryview(head), memoryview(item.payload)):
                while part:
                    part = part[os.write(fd, part) :]
            offsets.append(offsets[-1] + len(head) + len(item.payload))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    _step("written")
    os.replace(temp, target)
    _step("renamed")
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _step("synced")
    return offsets


def _step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)
