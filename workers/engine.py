"""One native engine serving one shard, kept safe from the engine's sharp edges.

The native engine blocks forever on the 2048th insert into a source that nothing consumes,
and a stream created after `start()` never runs. So a source that has taken many batches is
compacted before it could fill up: when no stream depends on it, it is dropped and created
again holding its rows in one batch per engine thread (`spread`); when streams read it, the
pipeline is started so that they consume it. A stream created after the start triggers a
rebuild (a fresh engine, the DDL replayed, the retained rows re-inserted the same way).

Hidden helper streams (an earlier design gave each source a "drain" stream) are avoided on
purpose: the engine drops the output of every cycle in which not all sources read by some
stream got data, so an extra stream on an idle source would lose other streams' results.

Every user stream is consumed by the worker's `StreamPump` (workers/streams.py) from the
moment it exists; the engine tells the pump when streams come and go and when it is rebuilt,
so that subscribers neither lose nor see twice a result across a rebuild.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import laminardb_native as native
import pyarrow as pa

from laminardb.wire import protocol
from workers.mirror.batches import Mirror, inserts_only

if TYPE_CHECKING:
    from workers.streams import StreamPump

log = logging.getLogger("laminardb.worker")

# Batches a source may take before it is compacted or consumed (the engine hangs at 2048).
COMPACT_AFTER = 1500

KEEP_CHUNKS_MAX = 64
"""At most this many batches of an insert go to the engine as they are..."""
KEEP_CHUNKS_ROWS = 65_536
"""...and only when each has at least this many rows; else they are concatenated first."""


def _keep_chunks(batches: list[pa.RecordBatch]) -> bool:
    return 1 < len(batches) <= KEEP_CHUNKS_MAX and all(
        b.num_rows >= KEEP_CHUNKS_ROWS for b in batches
    )


SPREAD_ROWS = 32_768
"""A batch is cut into pieces of at least this many rows to give every engine thread one."""


def spread(batches: list[pa.RecordBatch], threads: int) -> list[pa.RecordBatch]:
    """`batches`, each cut (zero-copy) into equal pieces, as many as its share of the rows
    asks for, so that there are at least `threads` of them where the rows allow it (a cut
    piece has at least `SPREAD_ROWS` rows).

    The engine scans a source one batch per thread: a worker holding its rows in fewer
    batches than it has threads leaves cores idle in every query (one batch: one core)."""
    if threads < 2 or len(batches) >= threads:
        return batches
    total = sum(b.num_rows for b in batches)
    out: list[pa.RecordBatch] = []
    for batch in batches:
        n = batch.num_rows
        pieces = max(1, min(-(-threads * n // max(1, total)), n // SPREAD_ROWS))
        cuts = [i * n // pieces for i in range(pieces + 1)]
        out.extend(batch.slice(a, b - a) for a, b in itertools.pairwise(cuts))
    return out


# What in a query can fail while it runs: division, modulo, casts, and functions that fail
# on some values (`abs` of the smallest integer). A false match costs one query more.
_MAY_FAIL = re.compile(r"[/%]|\b(?:CAST|ABS|TO_TIMESTAMP\w*|ARROW_CAST)\b", re.IGNORECASE)


def checked(query: Callable[[str], pa.Table], sql: str) -> pa.Table:
    """`query(sql)`, with an empty answer that hides a swallowed run-time error marked so.

    The engine answers a query that fails while it runs (an integer division by zero, a
    failed cast) with what it had, often nothing, instead of an error. One native
    instance reading every row then answers nothing; a worker reading some of them may
    be the only one to fail, and the others' rows would make a wrong answer. Wrapped in
    `count(*)` the query fails again and gives no row at all, where an empty answer of
    a healthy query counts 0 (one row). Only empty answers of SQL that can fail this way
    pay for the second query."""
    table = query(sql)
    if table.num_rows or not _MAY_FAIL.search(sql):
        return table
    # every column counted: the optimizer would drop a column nobody reads, and the
    # expression that fails with it
    counts = ", ".join(
        f'count("{name.replace(chr(34), chr(34) * 2)}")' for name in table.schema.names
    )
    try:
        check = query(f"SELECT {counts or 'count(*)'} FROM ({sql.rstrip().rstrip(';')}) AS _q")
    except Exception:  # the wrapped form is not plannable: nothing learnt
        return table
    if check.num_rows:
        return table
    return table.replace_schema_metadata({protocol.SWALLOWED: b"1"})


@dataclass
class SourceState:
    """One source: the statements that create it again, and batches since (re)creation."""

    create_sql: str
    alters: list[str] = field(default_factory=list)
    batches: int = 0
    event_column: str | None = None
    """Its WATERMARK column, whose values the engine judges late against the watermark."""


@dataclass
class Engine:
    """The native connection plus the DDL log needed to rebuild it."""

    conn: Any = field(default_factory=lambda: native.open(":memory:"))
    ddl: list[str] = field(default_factory=list)
    sources: dict[str, SourceState] = field(default_factory=dict)
    started: bool = False
    rows_ingested: int = 0
    batches_ingested: int = 0
    rebuilds: int = 0
    writers: dict[str, Any] = field(default_factory=dict)
    streams: StreamPump | None = None
    last_insert: float = 0.0
    threads: int = 1
    """The engine's threads (this worker's cores): rows are held in at least this many batches."""
    streamed: set[str] = field(default_factory=set)
    """Sources a stream reads: their batches are never cut (`spread`). Once the pipeline
    runs, the engine keeps a source's last 2048 batches for queries; one batch per shipment
    keeps at least the rows one native instance would keep."""
    consumed: set[str] = field(default_factory=set)
    """Sources the running pipeline takes batches from: those that existed when the engine
    started. The engine never consumes a source made after `start()` (nor one made again),
    whose batches stay pending; `streams.quiesce` must not wait for those."""
    unsettled: dict[str, int | None] = field(default_factory=dict)
    """Per consumed source, the lowest event time (ms) of the rows inserted since a quiesce
    last saw every batch taken (None: not known). A watermark at or below all of them
    cannot make the engine drop any of them, so it need not wait (`watermark`)."""
    mirror: Mirror = field(default_factory=Mirror)
    """The batches of each source whose engine rows are exactly those (`_mirrorable`), as
    handed to the engine: some queries are answered from them (workers/mirror/)."""

    def execute(self, sql: str, kind: str, name: str | None) -> dict[str, Any]:
        """Run one statement and keep the DDL log and the source states in step with it."""
        result = self.conn.execute(sql)
        if kind in (
            "CREATE_SOURCE",
            "CREATE_TABLE",
            "CREATE_STREAM",
            "CREATE_MATERIALIZED_VIEW",
            "CREATE_SINK",
            "CREATE_VIEW",
            "DROP",
            "ALTER",
        ):
            self.ddl.append(sql)
        mirrored = self.mirror.batches
        if kind == "CREATE_SOURCE" and name is not None:
            if name not in self.sources or "REPLACE" in sql.upper().split("SOURCE", 1)[0]:
                self.sources[name] = SourceState(sql, event_column=_event_column(self.conn, name))
                self.consumed.discard(name)
                self.unsettled.pop(name, None)
                mirrored[name] = [] if self._mirrorable(name) else None
                self.mirror.forget(name)
        elif kind == "ALTER" and name is not None and name in self.sources:
            self.sources[name].alters.append(sql)
            # The engine shows no row inserted after an ALTER (nor native): left to it.
            mirrored[name] = None
            self.mirror.forget(name)
        elif kind == "DROP":
            present = _source_names(self.conn)
            self.sources = {n: st for n, st in self.sources.items() if n in present}
            self.consumed &= present
            self.unsettled = {n: low for n, low in self.unsettled.items() if n in present}
            self.mirror.batches = {n: b for n, b in mirrored.items() if n in present}
            for gone in set(mirrored) - present:
                self.mirror.forget(gone)
        if kind in ("CREATE_STREAM", "CREATE_MATERIALIZED_VIEW", "CREATE_SINK", "DROP"):
            self.streamed = {edge.from_node for edge in self.conn.topology().edges}
            for source in self.streamed & self.sources.keys():
                self.mirror.batches[source] = None  # the pipeline consumes what it reads
        if kind in ("CREATE_STREAM", "CREATE_MATERIALIZED_VIEW") and self.started:
            # A stream created after start never runs in the native engine: restart it.
            self.rebuild()
        if self.streams is not None and kind in (
            "CREATE_STREAM",
            "CREATE_MATERIALIZED_VIEW",
            "DROP",
        ):
            self.streams.sync(self.conn)
        return _execute_result(result)

    def warm_up(self) -> None:
        """Pay the engine's one-off first-query cost (about half a second) before any caller does."""
        self.conn.sql("SELECT 1").to_arrow()

    def start(self) -> None:
        if not self.started:
            self.conn.start()
            self.started = True
            self.consumed = _source_names(self.conn)

    def insert(self, source: str, table: pa.Table) -> int:
        """Insert `table` (it must already have the source's schema): as one engine batch,
        or as its few large batches as they are (a load's pieces: concatenating them would
        copy every row once more at the commit)."""
        if table.num_rows == 0:
            return 0
        state = self.sources.get(source)
        batches = table.to_batches()
        if state is None or not _keep_chunks(batches):
            batches = table.combine_chunks().to_batches()
        if source not in self.streamed:
            batches = spread(batches, self.threads)
        if state is not None:
            # every batch of a multi-batch insert takes a place of the engine's 2048
            if state.batches + len(batches) > COMPACT_AFTER:
                self._compact(source, state)
            state.batches += len(batches)
        self.conn.insert(
            source, batches[0] if len(batches) == 1 else pa.Table.from_batches(batches)
        )
        mirrored = self.mirror.batches.get(source)
        if mirrored is not None:
            mirrored.extend(batches)
        if self.started and source in self.consumed:
            self._unsettle(source, table, state)
        self.rows_ingested += table.num_rows
        self.batches_ingested += 1
        self.last_insert = time.monotonic()
        return int(table.num_rows)

    def _compact(self, source: str, state: SourceState) -> None:
        """Keep `source` from filling up: a batch per thread again, or consumed by its streams."""
        retained = self.conn.sql(f"SELECT * FROM {source}").to_arrow()
        try:
            self.conn.execute(f"DROP SOURCE {source}")
        except Exception:
            # Streams depend on it: once the pipeline runs they consume it (and the engine
            # keeps its last 2048 batches for queries, as one native instance would).
            self.start()
            state.batches = 0
            return
        self.conn.execute(state.create_sql)
        self.consumed.discard(source)
        self.unsettled.pop(source, None)
        for alter in state.alters:
            self.conn.execute(alter)
        self.writers.pop(source, None)
        state.batches = 0
        if self._mirrorable(source):
            self.mirror.batches[source] = []
        if retained.num_rows:
            state.batches = self._insert_whole(self.conn, source, retained)
        log.info(
            "source %s compacted to %d batches (%d rows)", source, state.batches, retained.num_rows
        )

    def _mirrorable(self, name: str) -> bool:
        """Whether the engine's rows of source `name` are exactly the batches inserted: no
        stream reads it (the pipeline consumes what it reads), it was never altered (the
        engine shows no row inserted after an ALTER, nor does native) and no connector feeds
        it."""
        state = self.sources.get(name)
        return (
            state is not None
            and name not in self.streamed
            and not state.alters
            and inserts_only(state.create_sql)
        )

    def _insert_whole(self, conn: Any, source: str, table: pa.Table) -> int:
        """Insert a source's retained rows again, spread over the threads unless a stream
        reads it; returns the batches it took."""
        batches = table.combine_chunks().to_batches()
        if source not in self.streamed:
            batches = spread(batches, self.threads)
        conn.insert(source, batches[0] if len(batches) == 1 else pa.Table.from_batches(batches))
        mirrored = self.mirror.batches.get(source)
        if mirrored is not None:
            mirrored.extend(batches)
        return len(batches)

    def _unsettle(self, source: str, table: pa.Table, state: SourceState | None) -> None:
        from workers import streams

        low = streams.lowest_event_ms(table, None if state is None else state.event_column)
        known = self.unsettled.get(source, low)
        self.unsettled[source] = None if low is None or known is None else min(known, low)

    def quiesce(self) -> None:
        """Wait until the pipeline has turned every batch inserted so far into results."""
        if self.started and self.last_insert:
            from workers import streams

            streams.quiesce(self.conn, self.last_insert, self.consumed)
        self.unsettled.clear()

    def watermark(self, source: str, timestamp: int) -> int:
        """Advance the source watermark through a native writer (kept per source).

        The engine applies a watermark at once, also to batches still waiting for their
        cycle, whose rows it would then drop as late; so the batches inserted before are
        first left to be taken, unless none of their rows is behind `timestamp` (waiting
        costs one or two pipeline cycles, 100-200 ms, a call)."""
        if not all(low is not None and low >= timestamp for low in self.unsettled.values()):
            self.quiesce()
        writer = self.writers.get(source)
        if writer is None:
            writer = self.writers[source] = self.conn.writer(source)
        writer.watermark(timestamp)
        return int(writer.current_watermark)

    def query(self, sql: str) -> pa.Table:
        return self.conn.sql(sql).to_arrow()

    def query_checked(self, sql: str) -> pa.Table:
        """`query`, with an empty answer that hides a swallowed run-time error marked so
        (`checked`); from the mirrored batches where they answer it (workers/mirror/)."""
        return self.mirror.query(sql, lambda: checked(self.query, sql))

    def rebuild(self) -> None:
        """A fresh, started engine with the same catalog and retained rows (`_insert_whole`)."""
        from workers import streams

        retained = {
            name: self.conn.sql(f"SELECT * FROM {name}").to_arrow() for name in self.sources
        }
        fresh = native.open(":memory:")
        for sql in self.ddl:
            fresh.execute(sql)
        pump = self.streams
        subscriptions = pump.prepare(fresh) if pump is not None else {}
        fresh.start()
        replayed_at = time.monotonic()
        for name, table in retained.items():
            self.sources[name].batches = 0
            if self._mirrorable(name):
                self.mirror.batches[name] = []  # the engine holds exactly what is re-inserted
            if table.num_rows:
                self.sources[name].batches = self._insert_whole(fresh, name, table)
        if pump is not None:
            # The old engine's last results go out before its consumers stop...
            if self.started:
                streams.quiesce(self.conn, self.last_insert, self.consumed)
            pump.stop(drain=True)
        self.writers.clear()
        old, self.conn = self.conn, fresh
        self.started = True
        self.consumed = _source_names(fresh)
        self.unsettled.clear()
        self.rebuilds += 1
        old.close()
        if pump is not None:
            # ...and the results of the replayed rows, which subscribers already had, are dropped.
            if any(t.num_rows for t in retained.values()):
                streams.quiesce(fresh, replayed_at, self.consumed)
            pump.resume(subscriptions)
        log.info("engine rebuilt (%d sources)", len(self.sources))

    def close(self) -> None:
        if self.streams is not None:
            self.streams.stop(drain=False)  # a consumer polling a closed engine never returns
        self.conn.close()


def _source_names(conn: Any) -> set[str]:
    return {s.name for s in conn.sources()}


def _event_column(conn: Any, source: str) -> str | None:
    for s in conn.sources():
        if s.name == source:
            return s.watermark_column  # type: ignore[no-any-return]
    return None


def _execute_result(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "result_type": result.result_type,
        "rows_affected": result.rows_affected,
        "ddl_type": result.ddl_type,
        "ddl_object": result.ddl_object,
    }
    qr = result.to_query_result()
    out["table"] = qr.to_arrow() if qr is not None else None
    return out
