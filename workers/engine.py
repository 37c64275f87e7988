"""One native engine serving one shard, kept safe from the engine's sharp edges.

The native engine blocks forever on the 2048th insert into a source that nothing consumes,
and a stream created after `start()` never runs. So every source gets a hidden drain stream
(`__ldb_drain_<source>`, filtered to nothing) created with it; the engine is started before
any source could fill up; and a source created after the start, which no running stream can
drain, triggers a rebuild (a fresh engine, the DDL replayed, the retained rows re-inserted as
one batch per source) before it could fill up.

Every user stream is consumed by the worker's `StreamPump` (workers/streams.py) from the
moment it exists; the engine tells the pump when streams come and go and when it is rebuilt,
so that subscribers neither lose nor see twice a result across a rebuild.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import laminardb_native as native
import pyarrow as pa

if TYPE_CHECKING:
    from workers.streams import StreamPump

log = logging.getLogger("laminardb.worker")

DRAIN_PREFIX = "__ldb_drain_"
# Batches a source may hold without a running consumer before we act (the engine hangs at 2048).
UNDRAINED_LIMIT = 1500


def drain_name(source: str) -> str:
    return f"{DRAIN_PREFIX}{source}"


def drain_sql(source: str) -> str:
    """A stream that reads `source` and emits nothing: it keeps the source consumed.

    Relation names go to the engine as written: it keeps quotes as part of a source name.
    """
    return f"CREATE STREAM {drain_name(source)} AS SELECT * FROM {source} WHERE false"


@dataclass
class SourceState:
    """What the worker knows of one source: whether a running stream drains it, batch counts."""

    drained: bool
    batches: int = 0


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

    def execute(self, sql: str, kind: str, name: str | None) -> dict[str, Any]:
        """Run one statement and keep the drain streams and the DDL log in step with it."""
        if kind == "DROP" and name is not None and name in self.sources and "SOURCE" in sql.upper():
            return self._drop_source(sql, name)
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
        if kind == "CREATE_SOURCE" and name is not None:
            if name not in self.sources:
                self._add_drain(name)
            elif "REPLACE" in sql.upper().split("SOURCE", 1)[0]:
                # The old drain now reads the new source; a started pipeline must be rebuilt
                # for it to run, and the new source starts empty.
                self.sources[name] = SourceState(drained=not self.started)
                if self.started:
                    self.rebuild()
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

    def _add_drain(self, source: str) -> None:
        self.conn.execute(drain_sql(source))
        self.sources[source] = SourceState(drained=not self.started)

    def _drop_source(self, sql: str, name: str) -> dict[str, Any]:
        self.conn.execute(f"DROP STREAM IF EXISTS {drain_name(name)}")
        try:
            result = self.conn.execute(sql)
        except Exception:
            self.conn.execute(drain_sql(name))
            if self.started:
                self.rebuild()
            raise
        self.ddl.append(sql)
        self.sources.pop(name, None)
        if self.streams is not None:
            self.streams.sync(self.conn)  # a cascade may have dropped streams
        return _execute_result(result)

    def warm_up(self) -> None:
        """Pay the engine's one-off first-query cost (about half a second) before any caller does."""
        self.conn.sql("SELECT 1").to_arrow()

    def start(self) -> None:
        if not self.started:
            self.conn.start()
            self.started = True

    def insert(self, source: str, table: pa.Table) -> int:
        """Insert `table` as one engine batch (it must already have the source's schema)."""
        if table.num_rows == 0:
            return 0
        state = self.sources.get(source)
        if state is not None:
            if not self.started and state.batches >= UNDRAINED_LIMIT:
                self.start()
            elif self.started and not state.drained and state.batches >= UNDRAINED_LIMIT:
                self.rebuild()
            state = self.sources[source]
            state.batches += 1
        batch = table.combine_chunks().to_batches()
        self.conn.insert(source, batch[0] if len(batch) == 1 else table)
        self.rows_ingested += table.num_rows
        self.batches_ingested += 1
        self.last_insert = time.monotonic()
        return int(table.num_rows)

    def watermark(self, source: str, timestamp: int) -> int:
        """Advance the source watermark through a native writer (kept per source)."""
        writer = self.writers.get(source)
        if writer is None:
            writer = self.writers[source] = self.conn.writer(source)
        writer.watermark(timestamp)
        return int(writer.current_watermark)

    def query(self, sql: str) -> pa.Table:
        return self.conn.sql(sql).to_arrow()

    def rebuild(self) -> None:
        """A fresh, started engine with the same catalog and retained rows, every source drained."""
        from workers import streams

        retained = {
            name: self.conn.sql(f"SELECT * FROM {name}").to_arrow() for name in self.sources
        }
        fresh = native.open(":memory:")
        sources: dict[str, SourceState] = {}
        for sql in self.ddl:
            fresh.execute(sql)
        for name in self.sources:
            fresh.execute(drain_sql(name))
            sources[name] = SourceState(drained=True)
        pump = self.streams
        subscriptions = pump.prepare(fresh) if pump is not None else {}
        fresh.start()
        replayed_at = time.monotonic()
        for name, table in retained.items():
            if table.num_rows:
                fresh.insert(name, table.combine_chunks().to_batches()[0])
                sources[name].batches = 1
        if pump is not None:
            # The old engine's last results go out before its consumers stop...
            if self.started:
                streams.quiesce(self.conn, self.last_insert)
            pump.stop(drain=True)
        self.writers.clear()
        old, self.conn = self.conn, fresh
        self.sources = sources
        self.started = True
        self.rebuilds += 1
        old.close()
        if pump is not None:
            # ...and the results of the replayed rows, which subscribers already had, are dropped.
            if any(t.num_rows for t in retained.values()):
                streams.quiesce(fresh, replayed_at)
            pump.resume(subscriptions)
        log.info("engine rebuilt (%d sources)", len(sources))

    def close(self) -> None:
        if self.streams is not None:
            self.streams.stop(drain=False)  # a consumer polling a closed engine never returns
        self.conn.close()


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
