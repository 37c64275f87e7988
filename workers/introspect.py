"""Catalog and metrics calls answered by a worker as plain values (the hidden drains removed)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil

from laminardb.wire import arrow_ipc
from workers.engine import DRAIN_PREFIX, Engine


def _visible(name: str) -> bool:
    return not name.startswith(DRAIN_PREFIX)


def _fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in names}


_PIPELINE = (
    "total_events_ingested",
    "total_events_emitted",
    "total_events_dropped",
    "total_cycles",
    "total_batches",
    "uptime_secs",
    "state",
    "source_count",
    "stream_count",
    "sink_count",
    "pipeline_watermark",
)
_SOURCE = (
    "name",
    "total_events",
    "pending",
    "capacity",
    "is_backpressured",
    "watermark",
    "utilization",
)
_STREAM = ("name", "total_events", "pending", "capacity", "is_backpressured", "watermark", "sql")


def call(engine: Engine, method: str, args: list[Any]) -> tuple[Any, Any]:
    """(value, optional Arrow IPC frame) for one read-only call."""
    conn = engine.conn
    if method == "schema":
        return None, arrow_ipc.dumps(_schema(conn, args[0]).empty_table())
    if method == "sources":
        return [[s.name, s.watermark_column] for s in conn.sources()], None
    if method == "streams":
        return [[s.name, s.sql] for s in conn.streams() if _visible(s.name)], None
    if method == "sinks":
        return [s.name for s in conn.sinks()], None
    if method in ("list_tables", "list_streams", "list_sinks", "tables", "materialized_views"):
        return [n for n in getattr(conn, method)() if _visible(n)], None
    if method == "metrics":
        metrics = _fields(conn.metrics(), _PIPELINE)
        hidden = sum(1 for s in conn.list_streams() if not _visible(s))
        metrics["stream_count"] -= hidden
        return metrics, None
    if method == "source_metrics":
        m = conn.source_metrics(args[0])
        return (_fields(m, _SOURCE) if m is not None else None), None
    if method == "stream_metrics":
        m = conn.stream_metrics(args[0]) if _visible(args[0]) else None
        return (_fields(m, _STREAM) if m is not None else None), None
    if method == "all_source_metrics":
        return [_fields(m, _SOURCE) for m in conn.all_source_metrics()], None
    if method == "all_stream_metrics":
        return [_fields(m, _STREAM) for m in conn.all_stream_metrics() if _visible(m.name)], None
    if method == "pipeline_watermark":
        return conn.pipeline_watermark, None
    if method == "watermark":
        return engine.watermark(args[0], args[1]), None
    if method == "topology":
        topo = conn.topology()
        nodes = [[n.name, n.node_type, n.sql] for n in topo.nodes if _visible(n.name)]
        edges = [
            [e.from_node, e.to_node]
            for e in topo.edges
            if _visible(e.from_node) and _visible(e.to_node)
        ]
        return {"nodes": nodes, "edges": edges}, None
    if method == "show":
        return None, arrow_ipc.dumps(
            _without_drains(conn.execute(args[0]).to_query_result().to_arrow())
        )
    if method == "start":
        engine.start()
        return None, None
    if method == "stats":
        proc = psutil.Process(os.getpid())
        return {
            "pid": os.getpid(),
            "rss_bytes": proc.memory_info().rss,
            "rows_ingested": engine.rows_ingested,
            "batches_ingested": engine.batches_ingested,
            "rebuilds": engine.rebuilds,
            "started": engine.started,
        }, None
    raise ValueError(f"unknown worker call {method!r}")


def _schema(conn: Any, name: str) -> Any:
    """The schema of a source or stream (native `schema()`), or of a table (which it lacks)."""
    try:
        return conn.schema(name)
    except Exception as missing:
        if _visible(name):
            with contextlib.suppress(Exception):
                return conn.sql(f"SELECT * FROM {name} LIMIT 0").to_arrow().schema
        raise missing


def _without_drains(table: Any) -> Any:
    """SHOW output with the hidden drain streams' rows removed."""
    import pyarrow.compute as pc

    if (
        table.num_columns == 0
        or table.num_rows == 0
        or not str(table.schema.field(0).type).startswith(("string", "large_string"))
    ):
        return table
    first = table.column(0)
    keep = pc.invert(pc.fill_null(pc.starts_with(first, DRAIN_PREFIX), False))
    return table.filter(keep)
