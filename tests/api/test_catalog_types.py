"""Catalog records, metrics and the convenience types against the native engine.

A small native pipeline (two sources, a stream, a sink, one query) supplies the native objects;
ours are built from their properties and must print and answer the same.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import laminardb_native as native
import pandas as pd
import pyarrow as pa
import pytest
from laminardb_native import types as native_types

from laminardb.api import types as our_types
from laminardb.api.catalog import (
    PipelineEdge,
    PipelineMetrics,
    PipelineNode,
    PipelineTopology,
    QueryInfo,
    SinkInfo,
    SourceInfo,
    SourceMetrics,
    StreamInfo,
    StreamMetrics,
    WorkerInfo,
)
from laminardb.api.results import QueryResult

pytestmark = pytest.mark.timeout(60)

PIPELINE_METRICS = [
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
]
NODE_METRICS = ["name", "total_events", "pending", "capacity", "is_backpressured", "watermark"]


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    c = native.open(":memory:")
    c.execute(
        "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
    c.execute("CREATE SOURCE d (k VARCHAR, v BIGINT)")
    c.execute("CREATE STREAM hi AS SELECT * FROM ev WHERE value > 1")
    c.execute("CREATE SINK out FROM hi")
    c.start()
    c.insert("ev", {"ts": [2500, 2600], "device": ["a", "b"], "value": [2.0, 0.5]})
    deadline = time.monotonic() + 10
    while c.metrics().total_cycles == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    c.sql("SELECT count(*) FROM ev")
    yield c
    c.close()


def _props(obj: Any, names: list[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def test_sources(conn: Any) -> None:
    theirs = conn.sources()
    assert len(theirs) == 2
    for info in theirs:
        ours = SourceInfo(info.name, info.schema, info.watermark_column)
        assert repr(ours) == repr(info) == str(ours)
        assert (ours.name, ours.watermark_column) == (info.name, info.watermark_column)
        assert ours.schema.equals(info.schema)
        assert ours.partition_by == []
    assert {i.name: i.watermark_column for i in theirs} == {"ev": "ts", "d": None}


def test_source_partition_key_is_a_fresh_list() -> None:
    info = SourceInfo("s", pa.schema([("k", pa.string())]), None, ("k",))
    keys = info.partition_by
    keys.append("x")
    assert info.partition_by == ["k"]


def test_sinks_streams_queries(conn: Any) -> None:
    for sink in conn.sinks():
        assert repr(SinkInfo(sink.name)) == repr(sink) == "SinkInfo(name='out')"
    for stream in conn.streams():
        ours = StreamInfo(stream.name, stream.sql)
        assert repr(ours) == repr(stream) == "StreamInfo(name='hi')"
        assert (ours.name, ours.sql) == (stream.name, stream.sql)
    assert StreamInfo("x").sql is None
    queries = conn.queries()
    assert queries
    for query in queries:
        ours_q = QueryInfo(query.id, query.sql, query.active)
        assert repr(ours_q) == repr(query)
        assert (ours_q.id, ours_q.sql, ours_q.active) == (query.id, query.sql, query.active)
    assert repr(QueryInfo(7, "SELECT 1", False)) == "QueryInfo(id=7, active=false)"


def test_topology(conn: Any) -> None:
    theirs = conn.topology()
    nodes = [PipelineNode(n.name, n.node_type, n.schema, n.sql) for n in theirs.nodes]
    edges = [PipelineEdge(e.from_node, e.to_node) for e in theirs.edges]
    ours = PipelineTopology(nodes, edges)
    assert repr(ours) == repr(theirs)
    assert [repr(n) for n in ours.nodes] == [repr(n) for n in theirs.nodes]
    assert [repr(e) for e in ours.edges] == [repr(e) for e in theirs.edges]
    for mine, native_node in zip(ours.nodes, theirs.nodes, strict=True):
        assert (mine.name, mine.node_type, mine.sql) == (
            native_node.name,
            native_node.node_type,
            native_node.sql,
        )
        assert (mine.schema is None) == (native_node.schema is None)
    for mine_e, native_edge in zip(ours.edges, theirs.edges, strict=True):
        assert (mine_e.from_node, mine_e.to_node) == (native_edge.from_node, native_edge.to_node)
    ours.nodes.clear()
    assert len(ours.nodes) == len(theirs.nodes)


def test_metrics(conn: Any) -> None:
    theirs = conn.metrics()
    ours = PipelineMetrics(**_props(theirs, PIPELINE_METRICS))
    assert repr(ours) == repr(theirs)
    assert _props(ours, PIPELINE_METRICS) == _props(theirs, PIPELINE_METRICS)
    assert repr(our_types.Metrics(ours)) == repr(native_types.Metrics(theirs))
    assert repr(our_types.Metrics(theirs)) == repr(native_types.Metrics(theirs))
    idle = PipelineMetrics()
    assert repr(our_types.Metrics(idle)) == repr(native_types.Metrics(idle))
    assert our_types.Metrics(idle).events_per_second == 0.0


def test_source_and_stream_metrics(conn: Any) -> None:
    names = [*NODE_METRICS, "utilization"]
    for theirs in conn.all_source_metrics():
        ours = SourceMetrics(**_props(theirs, names))
        assert repr(ours) == repr(theirs)
        assert _props(ours, names) == _props(theirs, names)
    names = [*NODE_METRICS, "sql"]
    streams = conn.all_stream_metrics()
    assert streams
    for theirs_s in streams:
        ours_s = StreamMetrics(**_props(theirs_s, names))
        assert repr(ours_s) == repr(theirs_s)
        assert _props(ours_s, names) == _props(theirs_s, names)


def test_read_only_like_native(conn: Any) -> None:
    pairs = [
        (SourceInfo("ev", pa.schema([])), conn.sources()[0], "name"),
        (PipelineNode("ev", "source"), conn.topology().nodes[0], "name"),
        (StreamMetrics("hi"), conn.all_stream_metrics()[0], "pending"),
        (PipelineMetrics(), conn.metrics(), "state"),
        (PipelineEdge("a", "b"), conn.topology().edges[0], "to_node"),
    ]
    for ours, theirs, prop in pairs:
        for obj in (ours, theirs):
            with pytest.raises(AttributeError):
                setattr(obj, prop, "x")
            with pytest.raises(AttributeError):
                setattr(obj, "extra", 1)  # noqa: B010 - the attribute does not exist
    assert conn.sources()[0] != conn.sources()[0]
    assert SourceInfo("ev", SCHEMA) != SourceInfo("ev", SCHEMA)


def test_worker_info() -> None:
    info = WorkerInfo(shard=1, pid=42, alive=True, rss_bytes=10, rows_ingested=5)
    assert (info.batches_ingested, info.cpu_percent) == (0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pid = 3  # type: ignore[misc]
    assert info == WorkerInfo(1, 42, True, 10, 5)
    assert "shard=1" in repr(info)


SCHEMA = pa.schema(
    [pa.field("ts", pa.int64(), nullable=False), ("device", pa.string()), ("t", pa.timestamp("us"))]
)


def test_column_and_schema_match_native() -> None:
    ours, theirs = our_types.Schema(SCHEMA), native_types.Schema(SCHEMA)
    assert repr(ours) == repr(theirs)
    assert [repr(c) for c in ours.columns] == [repr(c) for c in theirs.columns]
    assert ours.names == theirs.names and len(ours) == len(theirs) == 3
    assert ours.arrow_schema is SCHEMA
    for key in (0, 2, "device", -1):
        assert repr(ours[key]) == repr(theirs[key])
    for bad in ("nope", 5):
        with pytest.raises(Exception) as native_err:
            theirs[bad]
        with pytest.raises(type(native_err.value)):
            ours[bad]
    column = our_types.Column("a", "int64")
    assert column.nullable and column == our_types.Column("a", "int64", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        column.name = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("TableStats", (3, 100)),
        ("Watermark", (5,)),
        ("Watermark", (5, 2)),
        ("CheckpointStatus", (None, False)),
    ],
)
def test_plain_records_match_native(name: str, args: tuple[Any, ...]) -> None:
    ours, theirs = getattr(our_types, name)(*args), getattr(native_types, name)(*args)
    assert repr(ours) == repr(theirs)
    assert dataclasses.astuple(ours) == dataclasses.astuple(theirs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__setattr__(dataclasses.fields(ours)[0].name, 9)


def _change_rows(event: Any) -> list[str]:
    return [f"{row!r}|{row.keys()}|{row.values()}|{row.to_dict()}|{row.op}" for row in event]


def test_change_event_matches_native(conn: Any) -> None:
    result = conn.sql("SELECT ts, device FROM ev")
    for source in (result, QueryResult(result.to_arrow())):
        for op in ("Insert", "Delete"):
            ours, theirs = our_types.ChangeEvent(source, op), native_types.ChangeEvent(source, op)
            assert repr(ours) == repr(theirs) and len(ours) == len(theirs) == 2
            assert _change_rows(ours) == _change_rows(theirs)
            assert _change_rows(ours) == _change_rows(ours)
            pd.testing.assert_frame_equal(ours.df(), theirs.df())
            assert ours.pl().equals(theirs.pl())
            assert ours.pl(lazy=True).collect().equals(theirs.pl(lazy=True).collect())
            assert ours.arrow().equals(theirs.arrow())
    row = our_types.ChangeRow("Insert", {"a": 1})
    assert row["a"] == 1
    with pytest.raises(KeyError):
        row["b"]
    row.op = "Delete"
    assert repr(row) == repr(native_types.ChangeRow("Delete", {"a": 1}))


def test_materialized_view_queries_like_native(conn: Any) -> None:
    ours = our_types.MaterializedView(conn, "hi", "SELECT * FROM ev WHERE value > 1")
    theirs = native_types.MaterializedView(conn, "hi", "SELECT * FROM ev WHERE value > 1")
    assert repr(ours) == repr(theirs) == "MaterializedView(name='hi')"
    assert (ours.name, ours.sql) == (theirs.name, theirs.sql)
    assert our_types.MaterializedView(conn, "hi").sql is None
    assert ours.query().fetchall() == theirs.query().fetchall()
    assert ours.query("device = 'a'").fetchall() == theirs.query("device = 'a'").fetchall()
    assert repr(ours.schema()) == repr(theirs.schema())


class FakeConnection:
    """Records calls and serves one batch, like a connection with one stream."""

    def __init__(self, batch: QueryResult) -> None:
        self.batch = batch
        self.calls: list[tuple[str, Any]] = []

    def subscribe_stream(self, name: str) -> list[QueryResult]:
        self.calls.append(("subscribe_stream", name))
        return [self.batch, self.batch]

    def query_stream(self, name: str, where: str | None) -> QueryResult:
        self.calls.append(("query_stream", (name, where)))
        return self.batch


def test_materialized_view_subscribe_is_duck_typed() -> None:
    batch = QueryResult(pa.table({"k": ["a", "b"], "v": [1, 2]}))
    fake = FakeConnection(batch)
    view = our_types.MaterializedView(fake, "agg")
    assert view.subscribe() == [batch, batch]
    assert view.query() is batch and view.query("v > 1") is batch
    seen: list[list[str]] = []
    done = threading.Event()

    def handler(event: our_types.ChangeEvent) -> None:
        seen.append(_change_rows(event))
        if len(seen) == 2:
            done.set()

    thread = view.subscribe(handler)
    assert isinstance(thread, threading.Thread) and thread.daemon
    assert done.wait(10)
    thread.join(10)
    expected = [
        "ChangeRow(op='Insert', {'k': 'a', 'v': 1})|['k', 'v']|['a', 1]|{'k': 'a', 'v': 1}|Insert",
        "ChangeRow(op='Insert', {'k': 'b', 'v': 2})|['k', 'v']|['b', 2]|{'k': 'b', 'v': 2}|Insert",
    ]
    assert seen == [expected, expected]
    assert fake.calls == [
        ("subscribe_stream", "agg"),
        ("query_stream", ("agg", None)),
        ("query_stream", ("agg", "v > 1")),
        ("subscribe_stream", "agg"),
    ]
