"""Moves validated rows from the caller to the workers: coalesce, partition, stage, commit.

Small inserts are buffered per source and shipped together (the engine handles about 3,000
batches a second whatever their size, and keeps only its last 2048 batches per source for
queries), so a flush becomes one engine batch per worker. A flush is one transaction: every
part is first copied into its worker's memory (Stage), and only when all workers hold their
part is it inserted (Commit); a failure before that aborts everywhere, so no worker keeps
part of it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from laminardb.cluster.supervisor import Cluster
from laminardb.ingest import partition
from laminardb.wire import arrow_ipc, protocol

FLUSH_ROWS = 65_536
FLUSH_BYTES = 16 << 20
FLUSH_DELAY_S = 0.01
SPLIT_ROWS = 4_096


@dataclass
class Buffer:
    """Validated tables of one source waiting to be shipped, oldest first."""

    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0


@dataclass
class Target:
    """Where a source's rows go: its key columns (empty: spread) or one home worker."""

    keys: tuple[str, ...] = ()
    home: int | None = None


class Router:
    """Per-source buffers and the transaction that ships them. Callers hold the cluster lock."""

    def __init__(
        self,
        cluster: Cluster,
        split_rows: int = SPLIT_ROWS,
        on_ship: Callable[[str, pa.Table], None] | None = None,
    ):
        self.cluster = cluster
        self.split_rows = split_rows
        # Called with every table once its transaction committed (the durability log).
        self.on_ship = on_ship
        # Called with every table once all its parts are staged, before any worker commits
        # (the write-ahead log of laminardb/cluster/recovery.py); raising aborts everywhere.
        self.before_commit: Callable[[str, pa.Table], None] | None = None
        self.buffers: dict[str, Buffer] = {}
        self.targets: dict[str, Target] = {}
        self.rows_sent = [0] * len(cluster.workers)
        self._rr = partition.RoundRobin()

    def register(self, source: str, keys: Sequence[str] = (), home: int | None = None) -> None:
        self.targets[source] = Target(tuple(keys), home)

    def forget(self, source: str) -> None:
        self.targets.pop(source, None)
        self.buffers.pop(source, None)

    def add(self, source: str, table: pa.Table) -> None:
        """Buffer `table` (already cast to the source schema); ship when the buffer is big."""
        if table.num_rows == 0:
            return
        buf = self.buffers.get(source)
        if buf is None:
            buf = self.buffers[source] = Buffer()
        if not buf.tables:
            buf.since = time.monotonic()
        buf.tables.append(table)
        buf.rows += table.num_rows
        buf.nbytes += _size(table)
        if buf.rows >= FLUSH_ROWS or buf.nbytes >= FLUSH_BYTES:
            self.flush(source)

    def due(self, now: float) -> list[str]:
        return [s for s, b in self.buffers.items() if b.tables and now - b.since >= FLUSH_DELAY_S]

    def flush(self, source: str | None = None) -> int:
        """Ship the buffer of `source` (all buffers when None); returns the rows shipped."""
        names = [source] if source is not None else list(self.buffers)
        shipped = 0
        for name in names:
            buf = self.buffers.pop(name, None)
            if buf is None or not buf.tables:
                continue
            table = buf.tables[0]
            if len(buf.tables) > 1:
                # One chunk: hashing, `take` and the IPC write each cost per chunk, and a
                # flush gathers hundreds of small inserts.
                table = pa.concat_tables(buf.tables).combine_chunks()
            shipped += self.ship(name, table)
        return shipped

    def ship(self, source: str, table: pa.Table) -> int:
        """One all-or-nothing transaction placing `table`'s rows on their workers."""
        parts = self._parts(source, table)
        txn = self.cluster.next_txn()
        involved = [shard for shard, part in enumerate(parts) if part is not None and part.num_rows]
        try:
            self._stage(
                txn, source, {s: p for s, p in enumerate(parts) if s in involved and p is not None}
            )
            if self.before_commit is not None:
                self.before_commit(source, table)
            self.cluster.broadcast(lambda rid: protocol.Commit(rid, txn), involved)
        except BaseException:
            self._abort(txn, involved)
            raise
        for shard, part in enumerate(parts):
            if part is not None:
                self.rows_sent[shard] += part.num_rows
        if self.on_ship is not None:
            self.on_ship(source, table)
        return int(table.num_rows)

    def _parts(self, source: str, table: pa.Table) -> list[pa.Table | None]:
        n = len(self.cluster.workers)
        target = self.targets.get(source, Target())
        if target.home is not None:
            return [table if i == target.home else None for i in range(n)]
        if target.keys:
            return list(partition.split(table, target.keys, n))
        if table.num_rows >= self.split_rows * n:
            step = -(-table.num_rows // n)
            return [table.slice(i * step, step) for i in range(n)]
        home = self._rr.next(n)
        return [table if i == home else None for i in range(n)]

    def _stage(self, txn: int, source: str, parts: dict[int, pa.Table]) -> None:
        """Copy each part into its worker's arena, one slot per worker per round."""
        queues = {
            shard: _chunks(part, self.cluster.workers[shard].arena.size)
            for shard, part in parts.items()
        }
        while queues:
            pending: dict[int, int] = {}
            for shard in list(queues):
                arena = self.cluster.workers[shard].arena
                length, inline = _write_next(queues[shard], arena.view)
                if not queues[shard]:
                    del queues[shard]
                rid = self.cluster.new_rid()
                if inline is None:
                    self.cluster.send(shard, protocol.Stage(rid, txn, source, 0, length))
                else:
                    stage = protocol.Stage(rid, txn, source, 0, inline.size, inline=True)
                    self.cluster.send(shard, stage, inline)
                pending[rid] = shard
            self.cluster.collect(pending)

    def _abort(self, txn: int, shards: list[int]) -> None:
        for shard in shards:
            if self.cluster.workers[shard].alive and not self.cluster.closed:
                with contextlib.suppress(Exception):
                    # Not waited for: a stopped worker must not stretch the failure past its
                    # deadline; it handles the Abort after the Stage, and its reply is dropped.
                    self.cluster.send(shard, protocol.Abort(self.cluster.new_rid(), txn))


def _size(table: pa.Table) -> int:
    """About `table.nbytes`: its buffers' total size when small (for a table that is no
    slice, `nbytes` plus a few bytes of padding, and 30x cheaper than `nbytes`, which a
    100-row insert notices), else `nbytes` (a small slice of a big table must not count the
    whole table's buffers)."""
    total = int(table.get_total_buffer_size())
    return total if total <= _EXACT_ABOVE else int(table.nbytes)


_EXACT_ABOVE = 1 << 20


def _write_next(queue: list[pa.Table], view: memoryview) -> tuple[int, pa.Buffer | None]:
    """Serialise the next chunk into the arena, halving it until it fits.

    Returns (bytes written, None), or (0, the serialised row) for a single row too big for
    the arena, which then travels in the message itself.
    """
    while True:
        chunk = queue.pop()
        try:
            return arrow_ipc.write_into(chunk, view), None
        except (pa.ArrowInvalid, OSError, ValueError):
            if chunk.num_rows <= 1:
                return 0, arrow_ipc.dumps(chunk)
            half = chunk.num_rows // 2
            queue.extend([chunk.slice(half), chunk.slice(0, half)])


def _chunks(table: pa.Table, capacity: int) -> list[pa.Table]:
    """Row slices that fit the arena once serialised (reversed, so `pop` yields them in order)."""
    budget = int(capacity * 0.9) - (64 << 10)
    if table.nbytes <= budget:
        return [table]
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    step = max(1, budget // per_row)
    chunks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    return chunks[::-1]
