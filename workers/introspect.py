"""Catalog and metrics calls answered by a worker as plain values."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil

from laminardb.files import polars_read
from laminardb.wire import arrow_ipc
from workers.engine import Engine


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
        return [[s.name, s.sql] for s in conn.streams()], None
    if method == "sinks":
        return [s.name for s in conn.sinks()], None
    if method in ("list_tables", "list_streams", "list_sinks", "tables", "materialized_views"):
        return list(getattr(conn, method)()), None
    if method == "metrics":
        return _fields(conn.metrics(), _PIPELINE), None
    if method == "source_metrics":
        m = conn.source_metrics(args[0])
        return (_fields(m, _SOURCE) if m is not None else None), None
    if method == "stream_metrics":
        m = conn.stream_metrics(args[0])
        return (_fields(m, _STREAM) if m is not None else None), None
    if method == "all_source_metrics":
        return [_fields(m, _SOURCE) for m in conn.all_source_metrics()], None
    if method == "all_stream_metrics":
        return [_fields(m, _STREAM) for m in conn.all_stream_metrics()], None
    if method == "parquet_reader":  # which reader the next Parquet load uses (polars_read.py)
        return ("polars" if polars_read.ready() is not None else "pyarrow"), None
    if method == "pipeline_watermark":
        return conn.pipeline_watermark, None
    if method == "watermark":
        return engine.watermark(args[0], args[1]), None
    if method == "topology":
        topo = conn.topology()
        nodes = [[n.name, n.node_type, n.sql] for n in topo.nodes]
        edges = [[e.from_node, e.to_node] for e in topo.edges]
        return {"nodes": nodes, "edges": edges}, None
    if method == "show":
        return None, arrow_ipc.dumps(conn.execute(args[0]).to_query_result().to_arrow())
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
            "mirror_answers": engine.mirror.answers,
        }, None
    raise ValueError(f"unknown worker call {method!r}")


def _schema(conn: Any, name: str) -> Any:
    """The schema of a source or stream (native `schema()`), or of a table (which it lacks)."""
    try:
        return conn.schema(name)
    except Exception as missing:
        with contextlib.suppress(Exception):
            return conn.sql(f"SELECT * FROM {name} LIMIT 0").to_arrow().schema
        raise missing
