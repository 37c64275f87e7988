"""Merging a non-windowed streaming aggregate across workers: full snapshots (pure logic).

Natively, a stream such as `SELECT device, COUNT(*), AVG(v) FROM ev GROUP BY device` (no
window) is cumulative: every pipeline cycle with data emits the full current result of all
groups, with no retraction and in no particular row order (research §4.6). Over a source whose
rows of one group are spread over several workers, each worker runs the partial form that
`merge.plan` writes for it (the window rewrite minus the window: `__g*` keys, partial
aggregates, AVG as SUM + COUNT, `COUNT(*) AS __n` of every row the engine accepted, WHERE
folded into the aggregates with `__m` counting the rows that pass it), so each of its cycles
emits its full current partials.

`CumulativeMerger` keeps, per worker, the latest partial row of each group. (A worker's
engine may deliver one cycle's result as several batches, one per internal partition, so a
batch is not a snapshot; the latest row per group is, whatever the batching.) A group's `__n`
only grows and counts rows that worker was sent, so when the latest rows' counts add up to
every accepted row the coordinator sent for the source (`expect_rows`), every group's latest
row holds all its rows and their combination (combine.py, as for a window) is a consistent
full result: that is when one is emitted. Emission is therefore driven by the workers'
cycles, as natively by the engine's, and the last emission after the inserts settle is the
result one instance emits.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from laminardb.streams.merge import STALL_S, MergePlan, WindowMerger

log = logging.getLogger("laminardb.streams")


class CumulativeMerger(WindowMerger):
    """The latest partial snapshot of each worker of one cumulative stream; emits their merge
    whenever the snapshots account for every row sent so far. Thread-safe like WindowMerger."""

    def __init__(self, merge_plan: MergePlan, schema: pa.Schema, stall_s: float = STALL_S):
        super().__init__(merge_plan, schema, stall_s)
        self._latest: dict[int, pa.Table] = {}  # shard -> its latest partial row per group
        self._counted: dict[int, int] = {}  # shard -> rows those rows account for
        self._keys = [f"__g{i}" for i in range(merge_plan.groups)]
        if any(agg.distinct for agg in merge_plan.aggs):
            self._keys.append("__d")
        self._expected = 0
        self._fresh = False  # a snapshot arrived since the last emission
        self._touched = 0.0
        self._broken = False  # a worker restarted: its replayed rows are not counted

    def expect_rows(self, rows: int) -> None:
        """`rows` more rows (accepted by the engines: not late) were sent to the workers."""
        with self._lock:
            self._expected += rows
            self._touched = time.monotonic()

    def add(self, partial: pa.Table, shard: int = 0) -> None:
        """Partial rows from worker `shard`: each replaces that worker's row of its group."""
        with self._lock:
            self.rows_in += partial.num_rows
            if partial.num_rows == 0:
                return
            previous = self._latest.get(shard)
            latest = partial if previous is None else _newest(previous, partial, self._keys)
            self._latest[shard] = latest
            self._counted[shard] = int(pc.sum(latest.column("__n")).as_py() or 0)
            self._fresh = True
            self._touched = time.monotonic()

    def ready(self, now: float | None = None) -> pa.Table | None:
        """The merged full result when a new, complete set of snapshots is there, else None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._fresh or self._broken:
                return None
            counted = sum(self._counted.values())
            if counted != self._expected:
                if counted > self._expected or now - self._touched < self.stall_s:
                    return None  # a snapshot is behind, or rows are still being counted
                self.stalled += 1
                log.warning(
                    "stream %s: snapshots count %d rows, %d expected; emitting anyway",
                    self.plan.stream,
                    counted,
                    self._expected,
                )
            self._fresh = False
            parts = list(self._latest.values())
        table = self._finish_pane(0, 0, parts)
        if table is None:
            return None
        with self._lock:
            self.batches_out += 1
            self.rows_out += table.num_rows
        return table

    def lose_open(self) -> list[int]:
        """A worker restarted: its engine replays rows this merger cannot account for, so no
        further snapshot can be proven complete; the subscribers are told (returns [0])."""
        with self._lock:
            self._broken = True
        return [0]

    @property
    def broken(self) -> bool:
        """A worker restarted since the stream was created: its totals cannot be merged."""
        with self._lock:
            return self._broken

    @property
    def open_windows(self) -> int:
        return 0


def _newest(previous: pa.Table, partial: pa.Table, keys: list[str]) -> pa.Table:
    """The rows of `previous` and then `partial`, keeping the last row of each group `keys`
    (NULL keys form a group, as in GROUP BY)."""
    table = pa.concat_tables([previous, partial], promote_options="permissive")
    if not keys:
        return table.slice(table.num_rows - 1)
    order = pa.array(range(table.num_rows), pa.int64())
    last = (
        table.select(keys)
        .append_column("__i", order)
        .group_by(keys, use_threads=False)
        .aggregate([("__i", "max")])
        .column("__i_max")
    )
    return table.take(last)
