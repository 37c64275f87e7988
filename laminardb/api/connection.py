"""`Connection`: the native API, answered by a coordinator and its worker processes.

Every call takes the connection's lock, so the connection can be shared between threads
like the native one; a background thread ships buffered inserts that are older than the
flush delay, so data never waits in the coordinator for long.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from laminardb.api import observe, schemas
from laminardb.api.args import typed_arguments
from laminardb.api.catalog import QueryInfo, SourceInfo, WorkerInfo
from laminardb.api.config import LaminarConfig
from laminardb.api.errors import (
    CheckpointError,
    ConnectionError,
    IngestionError,
    LaminarError,
    QueryError,
    codes,
)
from laminardb.api.results import CheckpointResult, ExecuteResult, QueryResult
from laminardb.api.subscriptions import (
    AsyncStreamSubscription,
    AsyncSubscription,
    CallbackSubscription,
    StreamSubscription,
    Subscription,
)
from laminardb.api.writer import Writer
from laminardb.cluster import ddl
from laminardb.cluster.catalog import Catalog
from laminardb.cluster.recovery import RecoveringRouter, Recovery, resubscribe
from laminardb.cluster.supervisor import Cluster, ClusterOptions
from laminardb.durability.log import Log, check_durability, is_persistent
from laminardb.files import copy as files_copy
from laminardb.files import load as files_load
from laminardb.files import progress as files_progress
from laminardb.ingest import convert
from laminardb.ingest.router import FLUSH_DELAY_S, SPLIT_ROWS
from laminardb.plan import distributed, gather, statements, tokens
from laminardb.plan.statements import StatementKind
from laminardb.streams import feed as stream_feed
from laminardb.streams.hub import StreamHub
from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb")

QUERY_LOG_SIZE = 10_000
_CATALOG_CHANGES = {
    StatementKind.CREATE_SOURCE,
    StatementKind.CREATE_TABLE,
    StatementKind.CREATE_STREAM,
    StatementKind.CREATE_MATERIALIZED_VIEW,
    StatementKind.CREATE_VIEW,
    StatementKind.CREATE_SINK,
    StatementKind.DROP,
    StatementKind.ALTER,
    StatementKind.OTHER,
}
_HOME_ONLY = {StatementKind.UPDATE, StatementKind.DELETE}
_METADATA = {StatementKind.SHOW, StatementKind.DESCRIBE, StatementKind.EXPLAIN}


@typed_arguments
class Connection:
    """A LaminarDB database whose sources are sharded over worker processes.

    Options beyond the native ones: `arena_bytes`, the shared-memory transfer area per
    worker (bigger inserts are chunked through it); `split_rows`, the rows per worker at
    which a shipment of an unkeyed source is split evenly over all workers (smaller ones go
    whole to the next worker in turn); `request_timeout_s`, how long a call waits for a
    live worker before failing with `ConnectionError`; `subscription_batches` and
    `subscription_bytes`, how much one stream subscriber may leave unread before it fails
    with `SubscriptionError` (the bound that keeps a slow subscriber from using unbounded
    memory); `recovery`, for `:memory:`, keeps a private temporary log so that a worker that
    dies is restarted and rebuilt as with a path (laminardb/cluster/recovery.py);
    `durability="sync"` (with a log) makes `insert()` return only once its rows are logged,
    fsynced and committed, instead of within 10 ms of it (the default, "buffered");
    `broadcast_rows`, the most rows the small sides of a join may hold together to be shipped
    to every worker (a broadcast join; default 100,000, 0: never; laminardb/plan/broadcast.py).
    """

    def __init__(
        self,
        path: str = ":memory:",
        *,
        workers: int,
        config: LaminarConfig | None = None,
        arena_bytes: int = 64 << 20,
        split_rows: int = SPLIT_ROWS,
        request_timeout_s: float = 300.0,
        subscription_batches: int = stream_feed.MAX_BATCHES,
        subscription_bytes: int = stream_feed.MAX_BYTES,
        recovery: bool = False,
        durability: str = "buffered",
        broadcast_rows: int | None = None,
    ):
        self.path = path
        self.config = config or LaminarConfig()
        # Locked before workers start; recovery=True: a private log to rebuild dead workers.
        mode = check_durability(durability)
        if mode != "buffered" and not (is_persistent(path) or recovery):
            raise ValueError(f'durability="{mode}" needs a path (or recovery=True)')
        if broadcast_rows is not None and (type(broadcast_rows) is not int or broadcast_rows < 0):
            raise ValueError(
                f"broadcast_rows must be an int >= 0 (0: never), not {broadcast_rows!r}"
            )
        self._durable = Log(path) if is_persistent(path) else (Log.private() if recovery else None)
        if self._durable is not None:
            self._durable.durability = mode
        self._logging = False  # set once the log is replayed: from then on, log changes
        options = ClusterOptions(
            workers=workers,
            arena_bytes=arena_bytes,
            request_timeout_s=request_timeout_s,
            broadcast_rows=broadcast_rows,
        )
        # the planner's imports happen while the workers start, not in the first query
        imports = threading.Thread(
            target=statements.import_first_query_modules, name="laminardb-imports"
        )
        imports.start()
        try:
            self._cluster = Cluster(options)
        except BaseException:
            if self._durable is not None:
                self._durable.close()
            raise
        finally:
            imports.join()
        self._lock = self._cluster.lock
        self._catalog = Catalog()
        self._router = RecoveringRouter(self._cluster, split_rows)
        self._queries: collections.deque[QueryInfo] = collections.deque(maxlen=QUERY_LOG_SIZE)
        self._query_ids = itertools.count(1)
        self._checkpoints = itertools.count(1)
        self._state = "Created"
        self._shutdown = False
        self._background_error: BaseException | None = None
        self._stop = threading.Event()
        self._streams = StreamHub(
            self._cluster,
            self._cluster.take_data_socket(),
            max_batches=subscription_batches,
            max_bytes=subscription_bytes,
        )
        self._recovery = Recovery(self._cluster, self._router, self._durable)
        self._recovery.hooks.append(resubscribe(self._streams))
        self._finalizer = weakref.finalize(
            self, _finalize, self._cluster, self._stop, self._streams, self._durable
        )
        self._flusher = threading.Thread(
            target=_flush_loop,
            args=(weakref.ref(self), self._stop),
            name="laminardb-flusher",
            daemon=True,
        )
        self._flusher.start()
        # Not a daemon: the interpreter waits for it (~0.5 s) at exit. A daemon thread still
        # inside the engine when the interpreter finalizes is ended by pthread_exit, whose
        # unwinding the engine's Rust frames catch: the process aborts ("FATAL: exception not
        # rethrown", exit status -6) instead of exiting cleanly.
        self._warm_up = threading.Thread(
            target=gather.warm_up, name="laminardb-warm-up", daemon=False
        )
        self._warm_up.start()
        if self._durable is not None:
            try:
                with self._lock:  # replayed statements and rows are not logged again
                    self._recovery.restore(lambda sql: self._execute_one(statements.classify(sql)))
            except BaseException:
                self._finalizer()
                raise
            self._recovery.logging = self._logging = True  # batches are logged before commit

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._cluster.closed and not self._shutdown

    def close(self) -> None:
        """Ship buffered rows, stop every worker and free every resource; safe to call twice."""
        with self._lock:
            if not self._cluster.closed:
                try:
                    self._router.flush()
                except LaminarError as exc:
                    log.warning("rows buffered at close could not be delivered: %s", exc)
            self._shutdown = False
        self._warm_up.join(10)
        self._finalizer()

    def shutdown(self) -> None:
        """Stop the pipeline; later calls fail with the native Shutdown error."""
        self.close()
        self._shutdown = True
        self._state = "Stopped"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Connection(closed)" if self.is_closed else "Connection(open)"

    def _check(self) -> None:
        if self._shutdown:
            raise LaminarError("Shutdown (901): Database is shut down", code=codes.SHUTDOWN)
        if self._cluster.closed:
            raise ConnectionError("Connection is closed")
        self._recovery.ensure()  # a dead worker is restarted and rebuilt first (or an error)
        if self._background_error is not None:
            error, self._background_error = self._background_error, None
            raise IngestionError(
                f"buffered rows could not be delivered in the background: {error}",
                code=codes.INGESTION_FAILED,
            ) from error

    # -- ingestion -----------------------------------------------------------------------------

    def insert(self, table: str, data: Any) -> int:
        """Validate `data` against the source schema, route it by key; all rows or none."""
        with self._lock:
            self._check()
            schema = self._source_schema(table)
            rows = convert.to_table(data, schema, table=table)
            return self._accept(table, rows)

    def insert_json(self, table: str, data: str) -> int:
        with self._lock:
            self._check()
            rows = convert.from_json(data, self._source_schema(table), table=table)
            return self._accept(table, rows)

    def insert_csv(self, table: str, data: str) -> int:
        with self._lock:
            self._check()
            rows = convert.from_csv(data, self._source_schema(table), table=table)
            return self._accept(table, rows)

    def load(
        self,
        table: str,
        path: str,
        format: str | None = None,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        **options: Any,
    ) -> int:
        """Load files (path, folder or glob) into a source, read in parallel by the workers;
        all rows or none (laminardb/files). Options: header, delimiter. `progress(phase,
        done, total)` hears of the input bytes read ("read") and the commit ("commit")."""
        with self._lock, files_progress.watching(progress):
            self._check()
            return files_load.load(self, table, path, format, options)

    def writer(self, table: str) -> Writer:
        with self._lock:
            self._check()
            return Writer(self, table, self._source_schema(table))

    def _source_schema(self, table: str) -> pa.Schema:
        relation = self._catalog.get(table)
        if relation is None or relation.kind != "source":
            raise ddl.not_found(table)
        return relation.schema

    def _accept(self, table: str, rows: pa.Table) -> int:
        relation = self._catalog.get(table)
        assert relation is not None
        self._streams.ingest(self._router, relation.name, rows, self._catalog)
        return int(rows.num_rows)

    def _flush(self, table: str | None = None) -> int:
        return self._router.flush(table)

    def _broadcast_call(self, method: str, args: list[Any]) -> list[Any]:
        return [
            r.value for r in self._cluster.broadcast(lambda rid: protocol.Call(rid, method, args))
        ]

    # -- queries -----------------------------------------------------------------------------

    def sql(self, query: str) -> QueryResult:
        """Rows of a SELECT (or SHOW/DESCRIBE/EXPLAIN), exactly as one native instance answers.
        Several statements separated by `;` run in order and the last one's rows are returned,
        as natively."""
        with self._lock:
            self._check()
            texts = tokens.split_statements(query) if ";" in query else [query]
            for text in texts[:-1]:
                self._execute_one(statements.classify(text))
            stmt = statements.classify(texts[-1] if len(texts) > 1 else query)
            if stmt.kind is StatementKind.QUERY:
                return QueryResult(self._run_query(stmt.sql))
            if stmt.kind in _METADATA:
                return QueryResult(self._metadata(stmt.sql))
            if stmt.kind is StatementKind.COPY:
                return files_copy.run_sql(self, stmt)
            if stmt.kind is StatementKind.OTHER:
                # Not something we recognise: the engine's own parser gives the native error.
                return QueryResult(gather.run(stmt.sql, [], self._catalog, self._fetch))
            self._execute_one(stmt)  # native runs it, then says it has no rows
            raise QueryError(f"Expected query result, got DDL/DML: {stmt.sql}")

    def query(self, sql: str) -> QueryResult:
        return self.sql(sql)

    def _run_query(self, sql: str) -> pa.Table:
        table = self._recovery.retry(lambda: self._query_once(sql))  # again after a restart
        self._log_query(sql)
        return table

    def _query_once(self, sql: str) -> pa.Table:
        self._router.flush()
        table = distributed.run(sql, self._catalog, distributed.cluster_fetch(self._cluster))
        if table is None:  # no rule splits it: gather the rows it reads into one engine
            table = gather.run(sql, self._tables_read(sql), self._catalog, self._fetch)
        return table

    def _log_query(self, sql: str) -> None:
        """Record a query like native `queries()` does (SELECTs that ran, streams created)."""
        self._queries.append(QueryInfo(next(self._query_ids), sql, True))

    def _tables_read(self, sql: str) -> list[str]:
        named = statements.referenced_tables(sql)
        if named is None:
            return self._catalog.names()
        return [n for n in self._catalog.names() if n in named or n.lower() in named]

    def _fetch(self, sql: str, home: int | None) -> pa.Table:
        shards = None if home is None else [home]
        replies = self._cluster.broadcast(lambda rid: protocol.Query(rid, sql), shards)
        return pa.concat_tables([arrow_ipc.loads(r.data.buffer) for r in replies])

    def _metadata(self, sql: str) -> pa.Table:
        if " ".join(sql.upper().split()).rstrip(";") == "SHOW QUERIES":
            return observe.show_queries(list(self._queries))
        reply = self._cluster.request(0, protocol.Call(self._cluster.new_rid(), "show", [sql]))
        return arrow_ipc.loads(reply.data.buffer)

    def explain(self, query: str) -> pa.Table:
        """The distributed plan followed by the engine's own plan rows (plan_key, plan_value)."""
        with self._lock:
            self._check()
            self._router.flush()  # the expected bytes count the rows buffered so far
            return observe.explain(self, query)

    def stream(self, sql: str) -> observe.BatchIterator:
        """The result of `sql` as an iterator of QueryResult batches (one-shot, like native)."""
        return observe.BatchIterator(self.sql(sql).to_arrow())

    def subscribe(self, sql: str) -> Subscription:
        """A one-shot snapshot of `sql`, iterated batch by batch (the native semantics)."""
        return Subscription(self.sql(sql).to_arrow())

    def subscribe_callback(
        self, sql: str, on_data: Any, on_error: Any = None
    ) -> CallbackSubscription:
        """A one-shot snapshot of `sql` passed batch by batch to `on_data` (native semantics)."""
        table = self.sql(sql).to_arrow()
        feed = stream_feed.Feed.finished("query", table.to_batches(), table.schema)
        return CallbackSubscription(
            feed, on_data, on_error, kind="query", adopt=self._streams.adopt
        )

    async def subscribe_async(self, sql: str) -> AsyncSubscription:
        """A one-shot snapshot of `sql`, iterated with `async for` (native semantics)."""
        table = self.sql(sql).to_arrow()
        return AsyncSubscription(
            stream_feed.Feed.finished("query", table.to_batches(), table.schema)
        )

    def _open_stream(self, name: str) -> stream_feed.Feed:
        with self._lock:
            self._check()
            return self._streams.open(name, self._catalog)

    def subscribe_stream(self, name: str) -> StreamSubscription:
        """Every batch of stream `name` produced from now on, merged over all workers.

        Any number of subscribers may follow one stream. Streams whose per-worker results
        do not add up by union (see laminardb/streams/union.py) raise `StreamError`.
        """
        return StreamSubscription(self._open_stream(name), self._streams.release)

    def subscribe_stream_callback(
        self, name: str, on_data: Any, on_error: Any = None
    ) -> CallbackSubscription:
        """Like `subscribe_stream`, with each batch passed to `on_data` on a thread of its own."""
        return CallbackSubscription(
            self._open_stream(name),
            on_data,
            on_error,
            release=self._streams.release,
            adopt=self._streams.adopt,
        )

    async def subscribe_stream_async(self, name: str) -> AsyncStreamSubscription:
        """Like `subscribe_stream`, read with `async for` (awaitable, as in native)."""
        return AsyncStreamSubscription(self._open_stream(name), self._streams.release)

    def query_stream(self, name: str, filter: str | None = None) -> QueryResult:
        """Re-run a stream's SQL as a batch query over the retained rows (like native)."""
        with self._lock:
            self._check()
            for stream_name, stream_sql in self._streams.merges.listing():
                if stream_name == name and stream_sql:
                    sql = (
                        stream_sql
                        if filter is None
                        else f"SELECT * FROM ({stream_sql}) AS q WHERE {filter}"
                    )
                    return QueryResult(self._run_query(sql))
            raise QueryError(f"Stream not found: {name}")

    # -- statements --------------------------------------------------------------------------

    def execute(self, sql: str) -> ExecuteResult:
        """Run one statement (several separated by `;` run in order; the last result is returned)."""
        with self._lock:
            self._check()
            texts = tokens.split_statements(sql)
            if not texts:
                raise QueryError("Query failed (400): Empty SQL statement", code=codes.QUERY_FAILED)
            for text in texts[:-1]:
                self._execute_one(statements.classify(text))
            return self._execute_one(statements.classify(texts[-1]))

    def _execute_one(self, stmt: statements.Statement) -> ExecuteResult:
        if stmt.kind is StatementKind.QUERY:
            return ExecuteResult.query(QueryResult(self._run_query(stmt.sql)))
        if stmt.kind in _METADATA:
            return ExecuteResult.metadata(QueryResult(self._metadata(stmt.sql)))
        if stmt.kind is StatementKind.COPY:
            return files_copy.run(self, stmt)
        self._router.flush()
        if stmt.kind is StatementKind.INSERT:
            return self._insert_statement(stmt)
        try:
            reply = self._apply(stmt)
        except ConnectionError as exc:  # worker 0 died just before: applied nowhere
            if not ddl.applied_nowhere(exc) or 0 not in [w.shard for w in self._cluster.dead(0)]:
                raise
            self._recovery.ensure()  # restarted from the log (or the in-memory error)
            reply = self._apply(stmt)
        result = _execute_result(reply)
        if stmt.kind in (StatementKind.CREATE_STREAM, StatementKind.CREATE_MATERIALIZED_VIEW):
            self._log_query(stmt.query or stmt.sql)
        return result

    def _apply(self, stmt: statements.Statement) -> Any:
        with self._recovery.statement(stmt.sql if self._logging else None):  # write-ahead
            if stmt.kind in _HOME_ONLY:
                reply = ddl.run_first(self._cluster, _execute_request(self._cluster, stmt))
            else:
                reply = ddl.apply(self._cluster, self._catalog, self._router, stmt)
            self._streams.after_ddl(stmt, self._catalog)  # merged streams' partials
        return reply

    def _insert_statement(self, stmt: statements.Statement) -> ExecuteResult:
        relation = self._catalog.get(stmt.name or "")
        if relation is not None and relation.kind == "source":
            return observe.insert_select(self, relation, stmt)  # its rows are logged at ship
        with self._recovery.statement(stmt.sql if self._logging else None):
            reply = self._cluster.request(0, _execute_request(self._cluster, stmt))
        return _execute_result(reply)

    def create_table(self, name: str, schema: Any, partition_by: list[str] | None = None) -> None:
        """Create a source from an Arrow schema or a dict of type strings (optionally keyed),
        with the columns native's `create_table` gives (`schemas`)."""
        self.execute(schemas.create_source_sql(name, schema, partition_by))

    def start(self) -> None:
        with self._lock:
            self._check()
            self._router.flush()
            self._broadcast_call("start", [])
            self._state = "Running"

    def checkpoint(self) -> CheckpointResult:
        """Flush every buffer; with a path, fsync the log (in memory: needs storage_dir)."""
        with self._lock:
            self._check()
            if not is_persistent(self.path) and self.config.storage_dir is None:
                raise CheckpointError(
                    "Internal error (900): [LDB-6001] Checkpoint error: checkpointing is not enabled",
                    code=codes.INTERNAL_ERROR,
                )
            self._router.flush()
            if self._durable is not None:
                self._durable.checkpoint()
            return CheckpointResult(next(self._checkpoints))

    @property
    def is_checkpoint_enabled(self) -> bool:
        return self.config.storage_dir is not None or is_persistent(self.path)

    @property
    def pipeline_state(self) -> str:
        return self._state

    def cancel_query(self, query_id: int) -> None:
        """Mark a recorded query inactive; an id never issued is an error, as in native."""
        with self._lock:
            for i, info in enumerate(self._queries):
                if info.id == query_id:
                    self._queries[i] = QueryInfo(info.id, info.sql, False)
                    return
            raise ddl.not_found(str(query_id))

    def queries(self) -> list[QueryInfo]:
        return list(self._queries)

    @property
    def active_query_count(self) -> int:
        return sum(1 for q in self._queries if q.active)

    # -- catalog and metrics (whole cluster) ---------------------------------------------------

    def schema(self, table: str) -> pa.Schema:
        with self._lock:
            self._check()
            relation = self._catalog.get(table)
            if relation is not None:
                return relation.schema
            merged = self._streams.merges.schema_of(table)  # a stream merged across workers
            return merged or ddl.fetch_schema(self._cluster, table)  # a stream: the engine knows

    def sources(self) -> list[SourceInfo]:
        with self._lock:
            self._check()
            out = []
            for name, watermark_column in self._worker0("sources"):
                relation = self._catalog.get(name)
                if relation is not None:
                    out.append(
                        SourceInfo(name, relation.schema, watermark_column, relation.partition_by)
                    )
            return out

    def _worker0(self, method: str, args: list[Any] | None = None) -> Any:
        return self._cluster.request(
            0, protocol.Call(self._cluster.new_rid(), method, args or [])
        ).value

    def workers(self) -> list[WorkerInfo]:
        """One entry per worker process: pid, liveness, memory and rows it was sent."""
        with self._lock:
            return observe.worker_infos(self._cluster, self._router.rows_sent)

    list_tables = observe.worker0_list("list_tables")
    list_streams = observe.worker0_list("list_streams")
    list_sinks = observe.worker0_list("list_sinks")
    tables = observe.worker0_list("tables")
    materialized_views = observe.worker0_list("materialized_views")
    sinks = observe.sinks
    streams = observe.streams
    topology = observe.topology
    metrics = observe.metrics
    source_metrics = observe.source_metrics
    all_source_metrics = observe.all_source_metrics
    stream_metrics = observe.stream_metrics
    all_stream_metrics = observe.all_stream_metrics
    stats = observe.stats
    pipeline_watermark = property(observe.pipeline_watermark)
    total_events_processed = property(observe.total_events_processed)
    source_count = property(observe.source_count)
    sink_count = property(observe.sink_count)


def _execute_request(cluster: Cluster, stmt: statements.Statement) -> protocol.Execute:
    return protocol.Execute(cluster.new_rid(), stmt.sql, stmt.kind.name, stmt.raw_name or stmt.name)


def _execute_result(reply: Any) -> ExecuteResult:
    value = reply.value
    table = arrow_ipc.loads(reply.data.buffer) if reply.data is not None else None
    return ExecuteResult(
        value["result_type"],
        value["rows_affected"],
        value["ddl_type"],
        value["ddl_object"],
        QueryResult(table) if table is not None else None,
    )


def _flush_loop(ref: weakref.ref[Connection], stop: threading.Event) -> None:
    while not stop.wait(FLUSH_DELAY_S):
        conn = ref()
        if conn is None:
            return
        if conn._lock.acquire(timeout=FLUSH_DELAY_S):
            try:
                if not conn._cluster.closed:
                    for source in conn._router.due(time.monotonic()):
                        conn._router.flush(source)
            except BaseException as exc:
                conn._background_error = exc
            finally:
                conn._lock.release()
        del conn


def _finalize(
    cluster: Cluster, stop: threading.Event, streams: StreamHub, durable: Log | None = None
) -> None:
    stop.set()
    streams.close()  # before the cluster: its context waits for the data socket to close
    with cluster.lock:
        cluster.close()
        if durable is not None:
            durable.close()  # fsync and release the lock
