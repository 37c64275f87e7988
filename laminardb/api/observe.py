"""Catalog, metrics and helper calls of `Connection`, merged over the workers.

Counters add up over workers; a source's watermark is the highest worker watermark, which is
what one instance fed every row would report (its watermark follows the largest timestamp
seen); catalogs are identical on every worker, so worker 0 answers for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psutil
import pyarrow as pa

from laminardb.api.catalog import (
    PipelineEdge,
    PipelineMetrics,
    PipelineNode,
    PipelineTopology,
    QueryInfo,
    SinkInfo,
    SourceMetrics,
    StreamInfo,
    StreamMetrics,
    WorkerInfo,
)
from laminardb.api.errors import QueryError, SchemaError, codes
from laminardb.api.results import ExecuteResult, QueryResult
from laminardb.cluster.catalog import Relation
from laminardb.cluster.supervisor import Cluster
from laminardb.ingest import convert
from laminardb.plan import distributed, gather, statements
from laminardb.plan import explain as plan_explain
from laminardb.plan.statements import SQLGLOT_DIALECT, Statement
from laminardb.plan.tokens import tokenize
from laminardb.streams.merge import is_hidden

if TYPE_CHECKING:
    from laminardb.api.connection import Connection

MIN_WATERMARK = -(2**63)


class BatchIterator:
    """Iterates a finished result as QueryResult batches (native `stream()` / `subscribe()`)."""

    def __init__(self, table: pa.Table):
        self._batches = iter(table.to_batches())
        self._schema = table.schema
        self._active = True

    @property
    def is_active(self) -> bool:
        return self._active

    def __iter__(self) -> Iterator[QueryResult]:
        return self

    def __next__(self) -> QueryResult:
        if self._active:
            for batch in self._batches:
                return QueryResult(pa.Table.from_batches([batch], schema=self._schema))
        self._active = False
        raise StopIteration

    def try_next(self) -> QueryResult | None:
        try:
            return next(self)
        except StopIteration:
            return None

    def cancel(self) -> None:
        self._active = False

    def __repr__(self) -> str:
        return f"QueryStream(active={self._active})"


def _calls(conn: Connection, method: str, args: list[Any] | None = None) -> list[Any]:
    with conn._lock:
        conn._check()
        return conn._broadcast_call(method, args or [])


def _worker0(conn: Connection, method: str, args: list[Any] | None = None) -> Any:
    with conn._lock:
        conn._check()
        return conn._worker0(method, args)


def worker0_list(method: str) -> Callable[[Connection], list[str]]:
    def call(conn: Connection) -> list[str]:
        return [n for n in _worker0(conn, method) if not is_hidden(str(n))]

    call.__name__ = method
    call.__doc__ = f"`{method}()` of the cluster (every worker holds the same catalog)."
    return call


def sinks(conn: Connection) -> list[SinkInfo]:
    return [SinkInfo(name) for name in _worker0(conn, "sinks")]


def streams(conn: Connection) -> list[StreamInfo]:
    with conn._lock:
        conn._check()
        return [StreamInfo(name, sql) for name, sql in conn._streams.merges.listing()]


def topology(conn: Connection) -> PipelineTopology:
    """The engine's pipeline as one instance draws it, then the cluster's own nodes.

    Every native node and edge is there as native reports it (a merged stream with its SQL as
    written and the edges the engine draws for that SQL). Each merged stream adds the nodes that
    compute it: one `partial` node per worker (`<stream>@<worker>`, its partial SQL) fed by
    the source, and a `merge` node (`<stream>@merge`, in the coordinator) fed by them that
    feeds the stream. Keeping only the source/stream/sink nodes gives the native view.
    """
    topo = _worker0(conn, "topology")
    runs = dict(conn._streams.merges.runs)
    nodes = []
    for name, node_type, sql in topo["nodes"]:
        relation = conn._catalog.get(name)
        if sql is not None:  # a merged stream runs in its partial form (laminardb/streams)
            sql = conn._streams.merges.listed(name, sql)
        nodes.append(PipelineNode(name, node_type, relation.schema if relation else None, sql))
    pairs = [
        (str(a), str(b))
        for a, b in topo["edges"]
        if not (is_hidden(a) or is_hidden(b)) and b not in runs
    ]
    upstream = [str(n) for n, kind, _ in topo["nodes"] if kind in ("source", "stream")]
    for name, run in runs.items():  # the engine draws x -> s where s's SQL mentions x
        sql = run.listed_sql.lower()
        pairs += [(x, name) for x in upstream if x != name and x.lower() in sql]
        merge_node = f"{name}@merge"
        for shard in range(len(conn._cluster.workers)):
            worker_node = f"{name}@{shard}"
            nodes.append(PipelineNode(worker_node, "partial", None, run.plan.partial_sql))
            pairs += [(run.plan.source, worker_node), (worker_node, merge_node)]
        nodes.append(PipelineNode(merge_node, "merge", run.merger.output_schema, None))
        pairs.append((merge_node, name))
    return PipelineTopology(nodes, [PipelineEdge(a, b) for a, b in pairs])


def _merge_pipeline(
    parts: list[dict[str, Any]], partial: int = 0, final: int = 0
) -> PipelineMetrics:
    """`partial` rows the workers emitted for merged streams are replaced by the `final` rows
    the coordinator emitted for them."""
    states = [p["state"] for p in parts]
    emitted = sum(p["total_events_emitted"] for p in parts)
    return PipelineMetrics(
        total_events_ingested=sum(p["total_events_ingested"] for p in parts),
        total_events_emitted=max(0, emitted - partial) + final,
        total_events_dropped=sum(p["total_events_dropped"] for p in parts),
        total_cycles=max(p["total_cycles"] for p in parts),
        total_batches=sum(p["total_batches"] for p in parts),
        uptime_secs=max(p["uptime_secs"] for p in parts),
        state="Running" if "Running" in states else states[0],
        source_count=parts[0]["source_count"],
        stream_count=parts[0]["stream_count"],
        sink_count=parts[0]["sink_count"],
        pipeline_watermark=max(p["pipeline_watermark"] for p in parts),
    )


def metrics(conn: Connection) -> PipelineMetrics:
    """Pipeline counters over the workers; a merged stream counts the rows its subscribers
    get (as one instance does), not the workers' partial rows."""
    parts = _calls(conn, "metrics")
    runs = list(conn._streams.merges.runs.values())
    partial = sum(run.merger.rows_in for run in runs)
    return _merge_pipeline(parts, partial, sum(run.merger.rows_out for run in runs))


def _counters(seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of one source or stream added up over the workers that report it."""
    return {
        "total_events": sum(p["total_events"] for p in seen),
        "pending": sum(p["pending"] for p in seen),
        "capacity": sum(p["capacity"] for p in seen),
        "is_backpressured": any(p["is_backpressured"] for p in seen),
    }


def _merge_source(parts: list[dict[str, Any] | None]) -> SourceMetrics | None:
    seen = [p for p in parts if p is not None]
    if not seen:
        return None
    return SourceMetrics(
        seen[0]["name"],
        **_counters(seen),
        watermark=max(p["watermark"] for p in seen),
        utilization=max(p["utilization"] for p in seen),
    )


def _merge_stream(conn: Connection, parts: list[dict[str, Any] | None]) -> StreamMetrics | None:
    """One stream's metrics as one instance reports them: `pending` is what its most-behind
    subscriber has not read (the workers' consumers never leave output waiting); a merged
    stream counts the batches the coordinator emitted and shows its SQL as written."""
    seen = [p for p in parts if p is not None]
    if not seen:
        return None
    name = seen[0]["name"]
    counters = _counters(seen)
    counters["pending"] += conn._streams.pending(name)
    run = conn._streams.merges.runs.get(name)
    sql = seen[0]["sql"]
    if run is not None:
        counters["total_events"] = run.merger.batches_out
        sql = run.listed_sql
    return StreamMetrics(name, **counters, watermark=min(p["watermark"] for p in seen), sql=sql)


def source_metrics(conn: Connection, name: str) -> SourceMetrics | None:
    return _merge_source(_calls(conn, "source_metrics", [name]))


def stream_metrics(conn: Connection, name: str) -> StreamMetrics | None:
    return _merge_stream(conn, _calls(conn, "stream_metrics", [name]))


def _by_name(per_worker: list[list[dict[str, Any]]]) -> dict[str, list[dict[str, Any] | None]]:
    out: dict[str, list[dict[str, Any] | None]] = {}
    for items in per_worker:
        for item in items:
            out.setdefault(item["name"], []).append(item)
    return out


def all_source_metrics(conn: Connection) -> list[SourceMetrics]:
    merged = (_merge_source(v) for v in _by_name(_calls(conn, "all_source_metrics")).values())
    return [m for m in merged if m is not None]


def all_stream_metrics(conn: Connection) -> list[StreamMetrics]:
    per_name = _by_name(_calls(conn, "all_stream_metrics")).values()
    merged = (_merge_stream(conn, v) for v in per_name)
    return [m for m in merged if m is not None and not is_hidden(m.name)]


def stats(conn: Connection, table: str) -> dict[str, Any]:
    """Source metrics as a dict, like native (`total_events` None for an unknown name)."""
    m = source_metrics(conn, table)
    if m is None:
        return {"name": table, "total_events": None}
    return {
        "name": m.name,
        "total_events": m.total_events,
        "pending": m.pending,
        "capacity": m.capacity,
        "is_backpressured": m.is_backpressured,
        "watermark": m.watermark,
        "utilization": m.utilization,
    }


def pipeline_watermark(conn: Connection) -> int:
    return metrics(conn).pipeline_watermark


def total_events_processed(conn: Connection) -> int:
    """Events in plus events out, over all workers (the native definition)."""
    m = metrics(conn)
    return m.total_events_ingested + m.total_events_emitted


def source_count(conn: Connection) -> int:
    return metrics(conn).source_count


def sink_count(conn: Connection) -> int:
    return metrics(conn).sink_count


def worker_infos(cluster: Cluster, rows_sent: list[int]) -> list[WorkerInfo]:
    out = []
    for worker in cluster.workers:
        rss, cpu = 0, 0.0
        alive = worker.alive
        if alive:
            try:
                proc = psutil.Process(worker.pid)
                rss = proc.memory_info().rss
                cpu = proc.cpu_percent(interval=None)
            except psutil.Error:
                alive = False
        out.append(
            WorkerInfo(worker.shard, worker.pid, alive, rss, rows_sent[worker.shard], 0, cpu)
        )
    return out


def insert_select(conn: Connection, relation: Relation, stmt: Statement) -> ExecuteResult:
    """`INSERT INTO source ... VALUES/SELECT`: evaluated exactly, then checked and routed like insert()."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(stmt.sql, read=SQLGLOT_DIALECT)
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" at line {first['line']}, column {first['col']}" if "line" in first else ""
        what = first.get("description") or str(exc).split("\n")[0]
        raise QueryError(
            f"SQL parse error (401): cannot parse INSERT: {what}{where}",
            code=codes.SQL_PARSE_ERROR,
        ) from None
    if not isinstance(tree, exp.Insert) or tree.expression is None:
        raise QueryError(
            f"SQL parse error (401): unsupported INSERT form: {stmt.sql}",
            code=codes.SQL_PARSE_ERROR,
        )
    target = tree.this
    columns = (
        [c.name for c in target.expressions]
        if isinstance(target, exp.Schema)
        else relation.schema.names
    )
    body = _insert_body(stmt.sql) or tree.expression.sql(dialect=SQLGLOT_DIALECT)
    table = conn._run_query(body)
    if table.num_columns != len(columns):
        raise SchemaError(
            f"INSERT INTO {relation.name} has {table.num_columns} values per row "
            f"for {len(columns)} columns ({', '.join(columns)})",
            code=codes.SCHEMA_MISMATCH,
        )
    table = table.rename_columns(columns)
    listed = set(columns)
    for field in relation.schema:  # a column left out of the list is NULL, as SQL has it
        if field.name not in listed:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    rows = convert.to_table(table, relation.schema, table=relation.name)
    conn._streams.ingest(conn._router, relation.name, rows, conn._catalog)
    conn._router.flush(relation.name)
    return ExecuteResult.affected(rows.num_rows)


def _insert_body(sql: str) -> str | None:
    """The `VALUES ...` / `SELECT ...` of an INSERT as written: the engine evaluates it as
    one native instance would (sqlglot's printing would change it: `2 ^ 3` is XOR to the
    engine, POWER to sqlglot); None for a form not found here (sqlglot's text is used)."""
    found = list(tokenize(sql))
    depth = 0
    for i, token in enumerate(found):
        depth += token.is_punct("(") - token.is_punct(")")
        if depth == 0 and i > 2 and token.is_word("VALUES", "SELECT", "WITH"):
            return sql[token.start : found[-1].end]
    return None


# -- explain and SHOW QUERIES -----------------------------------------------------------------

_PLAN_SCHEMA = pa.schema(
    [pa.field("plan_key", pa.string(), False), pa.field("plan_value", pa.string(), False)]
)


def explain(conn: Connection, query: str) -> pa.Table:
    """The distributed plan (only one execution would run: checked as execution checks it)
    followed by the engine's own plan rows; the caller holds the lock."""
    stmt = statements.classify(query)
    tables = conn._tables_read(stmt.sql)
    engine_plan = gather.run(
        f"EXPLAIN {stmt.sql}", tables, conn._catalog, lambda sql, home: _empty(conn, sql)
    )
    workers = len(conn._cluster.workers)
    fetch = distributed.cluster_fetch(conn._cluster)
    ours = plan_explain.rows(stmt.sql, conn._catalog, workers, fetch) or gather.explain_rows(
        stmt.sql, tables, workers, conn._catalog
    )
    keys = [k for k, _ in ours] + [str(v) for v in engine_plan.column(0).to_pylist()]
    values = [v for _, v in ours] + [str(v) for v in engine_plan.column(1).to_pylist()]
    return pa.table([pa.array(keys), pa.array(values)], schema=_PLAN_SCHEMA)


def _empty(conn: Connection, sql: str) -> pa.Table:
    """Schema-only stand-in for gathered rows (EXPLAIN needs no data)."""
    name = sql.rsplit(" ", 1)[-1].strip('"').replace('""', '"')
    relation = conn._catalog.get(name)
    return relation.schema.empty_table() if relation is not None else pa.table({})


def show_queries(infos: list[QueryInfo]) -> pa.Table:
    """`SHOW QUERIES` as the native engine answers it, from the coordinator's query log."""
    schema = pa.schema(
        [
            pa.field("query_id", pa.uint64(), False),
            pa.field("sql", pa.string(), False),
            pa.field("active", pa.bool_(), False),
        ]
    )
    return pa.table(
        [[q.id for q in infos], [q.sql for q in infos], [q.active for q in infos]],
        schema=schema,
    )
