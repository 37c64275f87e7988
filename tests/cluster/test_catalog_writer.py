"""Catalog, metrics and `Writer` of a cluster, against one native instance with the same pipeline.

Catalogs must be those of the native instance (the hidden `__ldb_drain_*` streams of the
workers never show); counters are sums over the workers and must add up to what one instance
fed the same rows reports.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb

pytestmark = pytest.mark.timeout(120)

DRAIN = "__ldb_drain"
_ids = itertools.count()

EV_ROWS = [
    pa.table(
        {
            "ts": pa.array([1000, 2000, 3000], pa.int64()),
            "device": ["a", "b", "a"],
            "value": [0.5, 2.0, 3.0],
        }
    ),
    pa.table({"ts": pa.array([4000], pa.int64()), "device": ["c"], "value": [5.0]}),
    pa.table(
        {
            "ts": pa.array([5500, 1500, 6000, 2500], pa.int64()),
            "device": ["d", "e", "f", "a"],
            "value": [1.5, 0.1, 9.0, 1.0],
        }
    ),
]
N_EV = sum(t.num_rows for t in EV_ROWS)
MV_SQL = "SELECT device, count(*) AS n FROM ev GROUP BY device"


def fresh(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


def poll(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """True as soon as `predicate()` holds; False once the deadline has passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def processed_is_ingested_plus_emitted(conn: Any) -> bool:
    m = conn.metrics()
    return bool(conn.total_events_processed == m.total_events_ingested + m.total_events_emitted)


@pytest.fixture(scope="module")
def pipe() -> Iterator[dict[str, Any]]:
    """The same started pipeline in a 2-worker cluster and in one native instance."""
    ours = laminardb.open(":memory:", workers=2)
    theirs = native.open(":memory:")
    states = []
    for conn, key in ((ours, " PARTITION BY (device)"), (theirs, "")):
        conn.execute(
            "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
            "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)" + key
        )
        conn.execute("CREATE SOURCE d (k VARCHAR, v BIGINT)")
        conn.execute("CREATE STREAM hi AS SELECT * FROM ev WHERE value > 1")
        conn.execute(f"CREATE MATERIALIZED VIEW mv1 AS {MV_SQL}")
        conn.execute("CREATE SINK out FROM hi")
        states.append(conn.pipeline_state)
        conn.start()
        states.append(conn.pipeline_state)
        for table in EV_ROWS:
            conn.insert("ev", table)
        conn.insert("d", pa.table({"k": ["a", "b"], "v": pa.array([1, 2], pa.int64())}))
    for conn in (ours, theirs):
        poll(lambda conn=conn: conn.metrics().total_events_ingested >= N_EV + 2)
    yield {"ours": ours, "theirs": theirs, "states": states}
    theirs.close()
    ours.close()


@pytest.fixture
def both(pipe: dict[str, Any]) -> tuple[Any, Any]:
    return pipe["ours"], pipe["theirs"]


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["list_tables", "list_streams", "list_sinks", "tables", "materialized_views"]
)
def test_name_lists_like_native(both: tuple[Any, Any], method: str) -> None:
    ours, theirs = both
    mine = {"ev", "d", "hi", "mv1", "out"}  # other tests add their own names to `ours`
    got = getattr(ours, method)()
    assert isinstance(got, list) and all(isinstance(n, str) for n in got)
    assert len(got) == len(set(got))
    assert set(got) & mine == set(getattr(theirs, method)()) & mine
    assert not [n for n in got if n.startswith(DRAIN)]


def test_sources_like_native(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    mine = {s.name: s for s in ours.sources()}
    for info in theirs.sources():
        got = mine[info.name]
        assert type(got).__name__ == "SourceInfo"
        assert repr(got) == repr(info)
        assert got.schema == info.schema
        assert got.watermark_column == info.watermark_column
    assert mine["ev"].partition_by == ["device"]
    assert mine["d"].partition_by == []
    assert mine["ev"].watermark_column == "ts"


def test_streams_and_sinks_like_native(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    our_streams = {s.name: s for s in ours.streams()}
    for info in theirs.streams():
        assert repr(our_streams[info.name]) == repr(info)
        assert our_streams[info.name].sql == info.sql
    assert not [n for n in our_streams if n.startswith(DRAIN)]
    our_sinks = {s.name: s for s in ours.sinks()}
    for info in theirs.sinks():
        assert repr(our_sinks[info.name]) == repr(info)
    assert {"hi", "mv1"} <= set(our_streams) and "out" in our_sinks


@pytest.mark.parametrize("name", ["ev", "d", "hi", "nope", "out"])
def test_schema_like_native(both: tuple[Any, Any], name: str) -> None:
    ours, theirs = both
    try:
        expected: Any = theirs.schema(name)
    except Exception as exc:
        with pytest.raises(laminardb.LaminarError) as info:
            ours.schema(name)
        assert type(info.value).__name__ == type(exc).__name__
        assert (str(info.value), getattr(info.value, "code", None)) == (
            str(exc),
            getattr(exc, "code", None),
        )
        return
    assert ours.schema(name) == expected


def test_topology_like_native(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    mine = {"ev", "d", "hi", "mv1", "out"}
    topo, expected = ours.topology(), theirs.topology()
    assert type(topo).__name__ == "PipelineTopology"

    def nodes(t: Any) -> set[tuple[Any, ...]]:
        return {
            (n.name, n.node_type, n.sql, None if n.schema is None else n.schema.to_string())
            for n in t.nodes
            if n.name in mine
        }

    def edges(t: Any) -> set[tuple[str, str]]:
        return {(e.from_node, e.to_node) for e in t.edges if {e.from_node, e.to_node} <= mine}

    assert nodes(topo) == nodes(expected)
    assert edges(topo) == edges(expected)
    assert not [n for n in topo.nodes if n.name.startswith(DRAIN)]
    assert not [e for e in topo.edges if DRAIN in e.from_node + e.to_node]


def test_hidden_drain_streams_never_appear(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    texts = [
        repr(ours.list_tables()),
        repr(ours.list_streams()),
        repr(ours.list_sinks()),
        repr(ours.tables()),
        repr(ours.materialized_views()),
        repr([(s.name, s.sql) for s in ours.streams()]),
        repr([(n.name, n.sql) for n in ours.topology().nodes]),
        repr([(e.from_node, e.to_node) for e in ours.topology().edges]),
        repr([m.name for m in ours.all_stream_metrics()]),
        repr([m.name for m in ours.all_source_metrics()]),
        repr([(q.sql) for q in ours.queries()]),
    ]
    for stmt in (
        "SHOW STREAMS",
        "SHOW SOURCES",
        "SHOW TABLES",
        "SHOW QUERIES",
        "SHOW MATERIALIZED VIEWS",
    ):
        texts.append(repr(ours.sql(stmt).fetchall()))
        texts.append(repr(ours.execute(stmt).to_query_result().fetchall()))
    for text in texts:
        assert DRAIN not in text, text
    assert ours.metrics().stream_count == theirs.metrics().stream_count
    assert ours.stream_metrics(f"{DRAIN}_ev") is None
    assert theirs.stream_metrics(f"{DRAIN}_ev") is None


# ---------------------------------------------------------------------------------------------
# Metrics: the same figures, added up over workers
# ---------------------------------------------------------------------------------------------


def test_pipeline_state_like_native(pipe: dict[str, Any]) -> None:
    ours_created, ours_running, theirs_created, theirs_running = pipe["states"]
    assert (
        (ours_created, ours_running) == (theirs_created, theirs_running) == ("Created", "Running")
    )
    assert pipe["ours"].pipeline_state == pipe["theirs"].pipeline_state == "Running"


def test_metrics_add_up_to_native(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    m, n = ours.metrics(), theirs.metrics()
    assert type(m).__name__ == "PipelineMetrics"
    for field in ("source_count", "stream_count", "sink_count", "state"):
        # Other tests may add sources to `ours`: compare what the fixture built.
        if field == "source_count":
            assert getattr(m, field) >= getattr(n, field) == 2
        else:
            assert getattr(m, field) == getattr(n, field), field
    assert m.total_events_ingested >= N_EV + 2
    assert m.total_events_dropped == n.total_events_dropped == 0
    # Native's total_events_processed is ingested + emitted.
    for conn in (ours, theirs):
        assert poll(lambda conn=conn: processed_is_ingested_plus_emitted(conn), timeout=5), conn
    assert ours.sink_count == theirs.sink_count
    assert ours.source_count == m.source_count


def test_events_ingested_sum_over_workers() -> None:
    """A fresh pair: total_events_ingested (rows) equals the native count, summed over workers."""
    rows = 0
    with laminardb.open(":memory:", workers=2) as ours:
        theirs = native.open(":memory:")
        try:
            for conn in (ours, theirs):
                conn.execute("CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE)")
                conn.execute(
                    "CREATE STREAM agg AS SELECT device, count(*) AS n FROM ev GROUP BY device"
                )
                conn.start()
            for i, table in enumerate(EV_ROWS * 3):
                for conn in (ours, theirs):
                    conn.insert("ev", table)
                if i % 2:
                    ours.sql("SELECT 1")  # ship: spread the rows over both workers
                rows += table.num_rows
            for conn in (ours, theirs):
                assert poll(lambda conn=conn: conn.metrics().total_events_ingested >= rows)
            assert (
                ours.metrics().total_events_ingested
                == theirs.metrics().total_events_ingested
                == rows
            )
            for conn in (ours, theirs):  # native's definition: ingested + emitted
                assert poll(lambda conn=conn: processed_is_ingested_plus_emitted(conn), timeout=5)
            assert sum(w.rows_ingested for w in ours.workers()) == rows
            assert all(w.rows_ingested > 0 for w in ours.workers())
        finally:
            theirs.close()


def test_source_metrics_and_stats(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    assert poll(
        lambda: ours.source_metrics("ev").watermark == theirs.source_metrics("ev").watermark
    )
    m, n = ours.source_metrics("ev"), theirs.source_metrics("ev")
    assert type(m).__name__ == "SourceMetrics"
    assert (m.name, m.watermark) == (n.name, n.watermark) == ("ev", 5000)
    assert m.total_events >= 1 and m.is_backpressured is False
    # Per worker figures add up to the merged ones.
    parts = [p for p in ours._broadcast_call("source_metrics", ["ev"]) if p is not None]
    assert len(parts) == 2
    assert m.total_events == sum(p["total_events"] for p in parts)
    assert m.pending == sum(p["pending"] for p in parts)
    stats, native_stats = ours.stats("ev"), theirs.stats("ev")
    assert list(stats) == list(native_stats)
    assert stats == {
        "name": m.name,
        "total_events": m.total_events,
        "pending": m.pending,
        "capacity": m.capacity,
        "is_backpressured": m.is_backpressured,
        "watermark": m.watermark,
        "utilization": m.utilization,
    }
    assert ours.stats("nope") == theirs.stats("nope") == {"name": "nope", "total_events": None}
    assert ours.source_metrics("nope") is None and theirs.source_metrics("nope") is None
    names = {x.name for x in ours.all_source_metrics()}
    assert {x.name for x in theirs.all_source_metrics()} <= names
    assert ours.pipeline_watermark == theirs.pipeline_watermark


def test_stream_metrics(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    m, n = ours.stream_metrics("hi"), theirs.stream_metrics("hi")
    assert type(m).__name__ == "StreamMetrics"
    assert (m.name, m.sql) == (n.name, n.sql)
    assert ours.stream_metrics("nope") is None and theirs.stream_metrics("nope") is None
    assert {x.name for x in ours.all_stream_metrics()} == {
        x.name for x in theirs.all_stream_metrics()
    }


def test_queries_like_native(both: tuple[Any, Any]) -> None:
    ours, theirs = both
    sql = f"SELECT count(*) AS {fresh('q')} FROM ev"
    for conn in (ours, theirs):
        assert conn.sql(sql).fetchall() == [(N_EV,)]
    our_queries = {q.sql: q for q in ours.queries()}
    their_queries = {q.sql: q for q in theirs.queries()}
    assert type(our_queries[sql]).__name__ == "QueryInfo"
    assert our_queries[sql].active and their_queries[sql].active
    # The materialized view's query is listed by native, and SHOW QUERIES is queries().
    assert (MV_SQL in our_queries) == (MV_SQL in their_queries)
    for conn in (ours, theirs):
        shown = {row[1] for row in conn.sql("SHOW QUERIES").fetchall()}
        assert shown == {q.sql for q in conn.queries()}
    # cancel_query marks the query inactive, as native does.
    before = (ours.active_query_count, theirs.active_query_count)
    ours.cancel_query(our_queries[sql].id)
    theirs.cancel_query(their_queries[sql].id)
    after = (ours.active_query_count, theirs.active_query_count)
    assert after == (before[0] - 1, before[1] - 1)
    assert not {q.sql: q for q in ours.queries()}[sql].active
    with pytest.raises(laminardb.SchemaError) as info:
        ours.cancel_query(987654321)
    assert info.value.code == laminardb.codes.TABLE_NOT_FOUND


def test_workers_report_rows_shipped(pipe: dict[str, Any]) -> None:
    ours = pipe["ours"]
    name = fresh("counted")
    ours.execute(f"CREATE SOURCE {name} (k VARCHAR, v BIGINT) PARTITION BY (k)")
    ours.sql("SELECT 1")
    before = ours.workers()
    ours.insert(name, {"k": [f"k{i}" for i in range(500)], "v": list(range(500))})
    ours.sql("SELECT 1")
    after = ours.workers()
    assert [w.shard for w in after] == [0, 1]
    assert all(w.alive and w.pid > 0 and w.rss_bytes > 0 for w in after)
    assert len({w.pid for w in after}) == 2
    grew = [a.rows_ingested - b.rows_ingested for a, b in zip(after, before, strict=True)]
    assert sum(grew) == 500 and all(g > 0 for g in grew), grew


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


def _writer_pair(pipe: dict[str, Any], key: str = "") -> tuple[str, Any, Any]:
    name = fresh("w")
    ddl = (
        f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
    pipe["ours"].execute(ddl + key)
    pipe["theirs"].execute(ddl)
    return name, pipe["ours"], pipe["theirs"]


def test_writer_like_native(pipe: dict[str, Any]) -> None:
    name, ours, theirs = _writer_pair(pipe, " PARTITION BY (device)")
    w, nw = ours.writer(name), theirs.writer(name)
    assert type(w).__name__ == "Writer"
    assert isinstance(w, laminardb.Writer) and laminardb.BatchWriter is laminardb.Writer
    assert repr(w) == repr(nw)
    assert (w.name, w.schema, w.current_watermark) == (nw.name, nw.schema, nw.current_watermark)
    batch = pa.RecordBatch.from_pydict(
        {"ts": pa.array([10, 20], pa.int64()), "device": ["a", "b"], "value": [1.0, 2.0]}
    )
    for data in (batch, {"ts": [30], "device": ["c"], "value": [3.0]}):
        assert w.insert(data) is None
        nw.insert(
            data
            if isinstance(data, pa.RecordBatch)
            else pa.RecordBatch.from_pydict(
                {
                    "ts": pa.array(data["ts"], pa.int64()),
                    "device": data["device"],
                    "value": data["value"],
                }
            )
        )
    assert w.flush() >= 0
    assert sorted(ours.sql(f"SELECT ts, device, value FROM {name}").fetchall()) == sorted(
        theirs.sql(f"SELECT ts, device, value FROM {name}").fetchall()
    )
    for mark in (5000, 2000, 7000):  # never backwards
        w.watermark(mark)
        nw.watermark(mark)
        assert w.current_watermark == nw.current_watermark
    assert w.current_watermark == 7000
    w.close()
    nw.close()
    assert repr(w) == repr(nw)
    for call in (
        lambda x: x.insert({"ts": [1], "device": ["z"], "value": [0.0]}),
        lambda x: x.flush(),
        lambda x: x.watermark(9000),
    ):
        with pytest.raises(laminardb.IngestionError) as info:
            call(w)
        with pytest.raises(Exception) as native_info:
            call(nw)
        assert type(info.value).__name__ == type(native_info.value).__name__ == "IngestionError"
        assert str(info.value) == str(native_info.value) == "Writer is closed"
    w.close()  # twice is fine, as in native
    assert ours.sql(f"SELECT count(*) FROM {name}").fetchall() == [(3,)]


def test_writer_watermark_reaches_every_worker(pipe: dict[str, Any]) -> None:
    name, ours, theirs = _writer_pair(pipe, " PARTITION BY (device)")
    with ours.writer(name) as w:
        w.insert({"ts": [100], "device": ["only-one-key"], "value": [1.0]})  # one worker's rows
        w.watermark(4000)
    nw = theirs.writer(name)
    nw.insert(
        pa.RecordBatch.from_pydict(
            {"ts": pa.array([100], pa.int64()), "device": ["only-one-key"], "value": [1.0]}
        )
    )
    nw.watermark(4000)
    per_worker = ours._broadcast_call("source_metrics", [name])
    assert [p["watermark"] for p in per_worker] == [4000] * len(ours.workers())
    assert ours.source_metrics(name).watermark == theirs.source_metrics(name).watermark == 4000
    nw.close()


def test_writer_context_manager_ships_and_closes(pipe: dict[str, Any]) -> None:
    name, ours, _ = _writer_pair(pipe)
    with ours.writer(name) as w:
        for i in range(50):
            w.insert({"ts": [i], "device": [f"d{i % 3}"], "value": [float(i)]})
    assert "closed" in repr(w)
    assert ours.sql(f"SELECT count(*), sum(ts) FROM {name}").fetchall() == [(50, sum(range(50)))]
    with pytest.raises(laminardb.IngestionError):
        w.insert({"ts": [1], "device": ["x"], "value": [1.0]})


def test_writer_bad_input_applies_nothing_and_keeps_working(pipe: dict[str, Any]) -> None:
    name, ours, _ = _writer_pair(pipe, " PARTITION BY (device)")
    w = ours.writer(name)
    w.insert({"ts": [1, 2], "device": ["a", "b"], "value": [1.0, 2.0]})
    with pytest.raises(laminardb.SchemaError, match="value"):
        w.insert({"ts": [3, 4], "device": ["c", "d"], "value": [3.0, "four"]})
    with pytest.raises(laminardb.SchemaError, match="nope"):
        w.insert({"ts": [3], "device": ["c"], "value": [3.0], "nope": [1]})
    w.insert({"ts": [5], "device": ["e"], "value": [5.0]})
    w.close()
    assert sorted(ours.sql(f"SELECT ts FROM {name}").fetchall()) == [(1,), (2,), (5,)]


@pytest.mark.parametrize("target", ["nope", "hi"])
def test_writer_for_unknown_or_stream_like_native(both: tuple[Any, Any], target: str) -> None:
    ours, theirs = both
    with pytest.raises(Exception) as native_info:
        theirs.writer(target)
    with pytest.raises(laminardb.SchemaError) as info:
        ours.writer(target)
    assert type(info.value).__name__ == type(native_info.value).__name__
    assert (str(info.value), info.value.code) == (str(native_info.value), native_info.value.code)  # type: ignore[attr-defined]
