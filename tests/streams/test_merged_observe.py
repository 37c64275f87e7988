"""What the cluster reports about a pipeline with a merged stream, field by field against native.

One `laminardb_native` instance and a 2-worker cluster get the same DDL (a source with a
watermark, a merged window stream `g`, a union stream `f`, a sink on `f`) and the same insert
calls, one cycle each. Then `topology()`, `stream_metrics()`, `all_stream_metrics()`,
`metrics()`, `source_metrics()` and `pipeline_watermark` must say what native says: a merged
stream counts the batches its subscribers get (not the workers' partials), pending counts
what its subscriber has not read, its SQL is the SQL as written. The topology holds every
native node and edge, plus one partial node per worker and one merge node per merged stream.
`capacity` is not compared: the cluster reports the sum of its workers' buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb
from workers.streams import quiesce

pytestmark = pytest.mark.timeout(120)

SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
DDL = [
    "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    "CREATE STREAM g AS SELECT tumble(ts, INTERVAL '2' SECOND) AS ws, COUNT(*) AS n, "
    "SUM(value) AS total FROM ev GROUP BY tumble(ts, INTERVAL '2' SECOND) EMIT ON WINDOW CLOSE",
    "CREATE STREAM f AS SELECT ts, device FROM ev WHERE value > 1",
    "CREATE SINK k FROM f",
]
CALLS = [
    [(100, "a", 1.0), (900, "b", 2.0), (1500, "c", 3.0)],
    [(2100, "a", 2.0), (2500, "d", 1.0)],
    [(1000, "e", 5.0), (3200, "b", 2.0)],  # 1000 is late (watermark 1500): dropped by both
    [(4600, "c", 4.0), (4700, "a", 1.0)],  # closes [2000,4000)
    [(6100, "d", 2.0)],  # closes [4000,6000): left unread to compare `pending`
]
Row = tuple[Any, ...]


def arrow(rows: list[Row]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.table({n: list(c) for n, c in zip(SCHEMA.names, cols, strict=True)}, schema=SCHEMA)


def drain(sub: Any, error: type[Exception], quiet_ms: int) -> list[Row]:
    out: list[Row] = []
    while True:
        try:
            batch = sub.next_timeout(quiet_ms)
        except error:
            return out
        if batch is None:
            return out
        out.extend(batch.fetchall())


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stream_fields(m: Any) -> tuple[Any, ...]:
    return (m.name, m.total_events, m.pending, m.is_backpressured, m.watermark, m.sql)


def test_observe_merged_pipeline_like_native() -> None:
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    try:
        for conn in (theirs, ours):
            for sql in DDL:
                conn.execute(sql)
        assert set(ours._streams.merges.runs) == {"g"}
        native_subs = {n: theirs.subscribe_stream(n) for n in ("g", "f")}
        subs = {n: ours.subscribe_stream(n) for n in ("g", "f")}
        theirs.start()
        ours.start()
        for i, rows in enumerate(CALLS):
            theirs.insert("ev", arrow(rows))
            ours.insert("ev", arrow(rows))
            quiesce(theirs, time.monotonic())
            if i == len(CALLS) - 1:
                break  # the last window stays unread on both sides
            for name in ("g", "f"):
                want = sorted(drain(native_subs[name], native.SubscriptionError, 200))
                got: list[Row] = []

                def arrived(name: str = name, want: list[Row] = want, got: list[Row] = got) -> bool:
                    got.extend(drain(subs[name], laminardb.SubscriptionError, 20))
                    return len(got) >= len(want)

                wait_for(arrived, f"{name} after call {i}")
                assert sorted(got) == want, f"{name} after call {i}"

        def pending(conn: Any, name: str) -> int | None:
            m = conn.stream_metrics(name)
            return None if m is None else int(m.pending)

        def unread(conn: Any) -> Callable[[], bool]:
            return lambda: pending(conn, "g") == pending(conn, "f") == 1

        wait_for(unread(theirs), "native pending")  # the last call's output
        wait_for(unread(ours), "cluster pending")

        for name in ("g", "f"):
            assert stream_fields(ours.stream_metrics(name)) == stream_fields(
                theirs.stream_metrics(name)
            )
        assert sorted(map(stream_fields, ours.all_stream_metrics())) == sorted(
            map(stream_fields, theirs.all_stream_metrics())
        )

        def pipeline(conn: Any) -> tuple[Any, ...]:
            m = conn.metrics()
            return (
                m.total_events_ingested,
                m.total_events_emitted,
                m.total_events_dropped,
                m.state,
                m.source_count,
                m.stream_count,
                m.sink_count,
                m.pipeline_watermark,
            )

        wait_for(lambda: pipeline(ours) == pipeline(theirs), "the same pipeline metrics")
        assert ours.pipeline_watermark == theirs.pipeline_watermark == 5100
        src, native_src = ours.source_metrics("ev"), theirs.source_metrics("ev")
        assert src is not None and native_src is not None
        assert (src.name, src.pending, src.is_backpressured, src.watermark) == (
            native_src.name,
            native_src.pending,
            native_src.is_backpressured,
            native_src.watermark,
        )

        topo, native_topo = ours.topology(), theirs.topology()

        def nodes(t: Any) -> set[tuple[Any, ...]]:
            return {(n.name, n.node_type, n.sql) for n in t.nodes}

        def edges(t: Any) -> set[tuple[str, str]]:
            return {(e.from_node, e.to_node) for e in t.edges}

        cluster_nodes = {
            ("g@0", "partial", ours._streams.merges.runs["g"].plan.partial_sql),
            ("g@1", "partial", ours._streams.merges.runs["g"].plan.partial_sql),
            ("g@merge", "merge", None),
        }
        assert nodes(topo) == nodes(native_topo) | cluster_nodes
        cluster_edges = {
            ("ev", "g@0"),
            ("ev", "g@1"),
            ("g@0", "g@merge"),
            ("g@1", "g@merge"),
            ("g@merge", "g"),
        }
        assert edges(topo) == edges(native_topo) | cluster_edges
        merge_node = next(n for n in topo.nodes if n.node_type == "merge")
        assert merge_node.schema is not None
        assert merge_node.schema.names == ["window_start", "window_end", "ws", "n", "total"]
    finally:
        ours.close()
        theirs.close()
