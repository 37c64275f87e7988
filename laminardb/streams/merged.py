"""The coordinator's I/O around merged streams: partial streams, the cluster watermark.

For each stream that `merge.plan` can merge (and a cluster of more than one worker), the
stream is replaced on every worker, right after its creation, by its partial form under the
same name (so each worker computes it once, not twice) and forwarded from then on; its
batches are merged per window (`merge.WindowMerger`), or for a stream without a window as
running totals (`cumulative.CumulativeMerger`, told by `ingest` how many rows each call sent),
and the results handed to the stream's subscribers by the hub. What the engines report about the stream (its SQL in `streams()`,
its schema) is answered from what they reported before the replacement (`listed`). Every insert call into a source with a WATERMARK passes
through `ingest`, which keeps the source's cluster watermark (`merge.SourceClock`), ships
buffered rows before a call that would make them late, sets the watermark on every worker
before a call that has late rows (so each worker drops exactly the rows one instance drops)
and tells the mergers how many rows each window will receive. Callers hold the cluster lock.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from laminardb.api.errors import LaminarError
from laminardb.cluster.catalog import Catalog
from laminardb.cluster.supervisor import Cluster
from laminardb.plan.statements import ObjectKind, Statement, StatementKind
from laminardb.streams import merge
from laminardb.streams.cumulative import CumulativeMerger
from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb.streams")

_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Run:
    """One merged stream: its plan, its merger and whether its source has a watermark."""

    plan: merge.MergePlan
    merger: merge.WindowMerger  # a CumulativeMerger for a stream without a window
    timed: bool
    listed_sql: str
    """The stream's SQL as the engine lists it (before it was replaced by its partial form)."""


class Merges:
    """Merged streams by name and the clocks of the sources they read."""

    def __init__(self, cluster: Cluster):
        self._cluster = cluster
        self.runs: dict[str, Run] = {}
        self.reasons: dict[str, str] = {}  # stream -> why it is not merged
        self._clocks: dict[str, merge.SourceClock | None] = {}

    # -- catalog changes ----------------------------------------------------------------------

    def after_ddl(self, stmt: Statement, catalog: Catalog) -> list[str]:
        """Keep the partial streams in step with a statement that succeeded; returns the names
        of streams that are gone or replaced (their subscribers end)."""
        gone: list[str] = []
        name = stmt.raw_name or stmt.name
        if name is None:
            return gone
        if stmt.kind in (StatementKind.CREATE_SOURCE, StatementKind.ALTER, StatementKind.DROP):
            for key in (name, stmt.name):  # a new or changed source starts a new clock
                self._clocks.pop(key or "", None)
        if stmt.kind is StatementKind.CREATE_STREAM:
            if name in self.runs and stmt.or_replace:  # the workers run the new SQL now
                self.runs.pop(name)
                gone.append(name)
            if name not in self.runs:
                self._create(name, stmt.sql, catalog)
        elif stmt.kind is StatementKind.DROP and stmt.drop_kind in (
            ObjectKind.STREAM,
            ObjectKind.SOURCE,
        ):
            present = self.stream_names()
            for stream in list(self.runs):
                if stream not in present:
                    self.runs.pop(stream)
                    gone.append(stream)  # dropped, or by DROP SOURCE ... CASCADE
            if stmt.drop_kind is ObjectKind.STREAM and name not in gone:
                gone.append(name)
            self.reasons = {k: v for k, v in self.reasons.items() if k in present}
        return gone

    def _create(self, name: str, create_sql: str, catalog: Catalog) -> None:
        if len(self._cluster.workers) < 2:
            return  # one worker's output is the stream's
        if not _SIMPLE_NAME.match(name):
            self.reasons[name] = "its name is quoted"
            return
        planned = merge.plan(name, create_sql, catalog)
        if isinstance(planned, str):
            self.reasons[name] = planned
            return
        relation = catalog.get(planned.source)
        timed = relation is not None and merge.watermark_of(relation) is not None
        schema = self._schema(name)
        listed = dict(self._listing()).get(name, "")
        try:
            self._replace(name, f"CREATE STREAM {name} AS {planned.partial_sql}")
            self._cluster.broadcast(lambda rid: protocol.Subscribe(rid, name))
        except LaminarError as exc:
            log.warning("stream %s cannot be merged across workers: %s", name, exc)
            self.reasons[name] = f"its partial stream could not be created ({exc})"
            try:
                self._replace(name, create_sql)  # the stream as the user wrote it again
            except LaminarError as again:
                log.error("stream %s could not be restored on every worker: %s", name, again)
            return
        merger = (CumulativeMerger if planned.cumulative else merge.WindowMerger)(planned, schema)
        self.runs[name] = Run(planned, merger, timed, listed)

    def restore(self, shard: int) -> None:
        """Put the partial forms back on a worker that was restarted with the user's DDL (call
        after its catalog is replayed, cluster lock held); its forwarding is turned on again."""
        for name, run in self.runs.items():
            drop = f"DROP STREAM IF EXISTS {name}"
            create = f"CREATE STREAM {name} AS {run.plan.partial_sql}"
            self._cluster.request(
                shard, protocol.Execute(self._cluster.new_rid(), drop, "DROP", name)
            )
            self._cluster.request(
                shard, protocol.Execute(self._cluster.new_rid(), create, "CREATE_STREAM", name)
            )
            self._cluster.request(shard, protocol.Subscribe(self._cluster.new_rid(), name))

    def _replace(self, name: str, create_sql: str) -> None:
        drop = f"DROP STREAM IF EXISTS {name}"
        self._cluster.broadcast(lambda rid: protocol.Execute(rid, drop, "DROP", name))
        self._cluster.broadcast(
            lambda rid: protocol.Execute(rid, create_sql, "CREATE_STREAM", name)
        )

    def _listing(self) -> list[tuple[str, str]]:
        reply = self._cluster.request(0, protocol.Call(self._cluster.new_rid(), "streams"))
        return [(str(n), str(sql or "")) for n, sql in reply.value]

    def listing(self) -> list[tuple[str, str]]:
        """(name, SQL) of every stream as one instance lists them (merged ones as written)."""
        return [(n, self.listed(n, sql)) for n, sql in self._listing()]

    def listed(self, name: str, sql: str) -> str:
        """The SQL to show for stream `name`, which the engines list as `sql`."""
        run = self.runs.get(name)
        return run.listed_sql if run is not None else sql

    def schema_of(self, name: str) -> pa.Schema | None:
        """The declared schema of a merged stream (the engines now hold its partial form)."""
        run = self.runs.get(name)
        return run.merger.schema if run is not None else None

    def stream_names(self) -> set[str]:
        """The streams the engines hold now."""
        return {n for n, _ in self._listing()}

    def _schema(self, name: str) -> pa.Schema:
        reply = self._cluster.request(0, protocol.Call(self._cluster.new_rid(), "schema", [name]))
        return arrow_ipc.loads(reply.data.buffer).schema

    # -- inserts ------------------------------------------------------------------------------

    def ingest(self, router: Any, source: str, rows: pa.Table, catalog: Catalog) -> list[Run]:
        """Buffer one insert call (`router.add`), keeping the cluster watermark exact; returns
        the runs that may have windows to emit now."""
        clock = self._clock(source, catalog)
        totals = [r for r in self.runs.values() if r.plan.source == source and r.plan.cumulative]
        if clock is None:
            router.add(source, rows)
            for run in totals:
                _expect_rows(run, rows.num_rows)
            return totals
        buf = router.buffers.get(source)
        step = clock.observe(rows, buffered=bool(buf is not None and buf.tables))
        if step.flush_before:
            router.flush(source)
        if step.set_watermark:
            mark = step.watermark
            recovery = getattr(router, "recovery", None)  # logged like a Writer's watermark
            with recovery.watermark(source, mark) if recovery is not None else nullcontext():
                self._cluster.broadcast(lambda rid: protocol.Call(rid, "watermark", [source, mark]))
        runs = [
            r
            for r in self.runs.values()
            if r.plan.source == source and r.timed and not r.plan.cumulative
        ]
        for run in runs:
            run.merger.expect(rows, step.live, step.watermark, step.any_live)
        router.add(source, rows)
        if step.set_watermark:
            router.flush(source)  # alone: later calls would raise its rows' watermark
        kept = pc.is_valid(rows.column(clock.column))  # the engine drops NULL event times
        kept = kept if step.live is None else pc.and_(kept, step.live)
        live = int(pc.sum(kept).as_py() or 0)
        for run in totals:
            _expect_rows(run, live)
        return runs + totals

    def advance(self, source: str, timestamp: int, catalog: Catalog) -> None:
        """A user's `Writer.watermark(timestamp)` (already set on every worker): the source's
        cluster watermark rises to it as one instance's does, so later rows behind it count
        as late (not expected by any window) and windows ending by it close on the next call
        that carries live rows, as natively (a watermark alone closes nothing)."""
        clock = self._clock(source, catalog)
        if clock is not None:
            clock.advance(timestamp)

    def watermark(self, source: str) -> int | None:
        """The cluster watermark of `source` (None when it has no WATERMARK or no insert yet)."""
        clock = self._clocks.get(source)
        if clock is None or clock.watermark == merge.MIN_WATERMARK:
            return None
        return clock.watermark

    def watches(self, source: str, catalog: Catalog) -> bool:
        """Whether every insert into `source` must pass through `ingest`: it has a WATERMARK
        (its cluster clock) or a merged stream reads it (its rows are counted)."""
        if any(run.plan.source == source for run in self.runs.values()):
            return True
        return self._clock(source, catalog) is not None

    def clock_names(self) -> list[str]:
        return [name for name, clock in self._clocks.items() if clock is not None]

    def _clock(self, source: str, catalog: Catalog) -> merge.SourceClock | None:
        """The source's clock, made on first use. It starts from the workers' own source
        watermark: after a reopen (or a restart) they replayed rows and watermarks that this
        connection's calls did not bring."""
        if source not in self._clocks:
            relation = catalog.get(source)
            mark = merge.watermark_of(relation) if relation is not None else None
            clock = merge.SourceClock(*mark) if mark is not None else None
            if clock is not None:
                clock.advance(self.workers_watermark(source))
            self._clocks[source] = clock
        return self._clocks[source]

    def workers_watermark(self, source: str) -> int:
        """The highest of the workers' own watermarks of `source` (their engines')."""
        call = protocol.Call
        replies = self._cluster.broadcast(lambda rid: call(rid, "source_metrics", [source]))
        marks = [int(r.value["watermark"]) for r in replies if r.value]
        return max(marks, default=merge.MIN_WATERMARK)


def _expect_rows(run: Run, rows: int) -> None:
    """Tell a cumulative stream's merger that `rows` accepted rows were sent to the workers."""
    if isinstance(run.merger, CumulativeMerger):
        run.merger.expect_rows(rows)
