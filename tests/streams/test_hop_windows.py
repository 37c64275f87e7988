"""Hop (sliding) windows merged across workers, against one native instance.

`hop(ts, INTERVAL <slide>, INTERVAL <size>)` projected, with EMIT ON WINDOW CLOSE / FINAL, is
the hop form the engine closes (research §4.4): each window comes out at the right moment,
one row per group and *pane* (the engine also groups by the projected hop value). The same
calls go to native and to a cluster of 1-3 workers (keyed or round-robin), in order, out of
order within the delay, with late rows and with idle workers; the multiset of rows must be
identical. Also: a TIMESTAMP source with a WATERMARK keeps working on a cluster (its clock
reads the column as epoch milliseconds) and drops the late rows native drops.
"""

from __future__ import annotations

import laminardb_native as native
import pyarrow as pa
import pytest
from test_merged_streams import (
    SOURCE,
    assert_same_rows,
    canon,
    finish,
    read_native,
    read_until,
    run_pair,
    ticks,
)

import laminardb
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.streams import merge

pytestmark = pytest.mark.timeout(120)

HOPS = {
    "hg": "CREATE STREAM hg AS SELECT hop(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) AS w, "
    "COUNT(*) AS n, SUM(value) AS total, MIN(value) AS lo, MAX(ts) AS last_ts FROM ev "
    "GROUP BY hop(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) EMIT ON WINDOW CLOSE",
    "hv": "CREATE STREAM hv AS SELECT value, hop(ts, INTERVAL '2' SECOND, INTERVAL '4' SECOND) "
    "AS w, COUNT(*) AS n, AVG(value) AS av FROM ev WHERE value > 2 "
    "GROUP BY value, hop(ts, INTERVAL '2' SECOND, INTERVAL '4' SECOND) EMIT FINAL",
}


@pytest.mark.parametrize(
    ("workers", "keyed", "mode"),
    [
        (2, True, "late"),
        (3, False, "late"),
        (2, True, "idle"),
        pytest.param(1, False, "shuffled", marks=pytest.mark.slow),
        pytest.param(2, False, "ordered", marks=pytest.mark.slow),
        pytest.param(3, True, "shuffled", marks=pytest.mark.slow),
    ],
)
def test_hop_windows_match_native(workers: int, keyed: bool, mode: str) -> None:
    data = finish(
        ticks(seed=workers * 17 + keyed * 5 + len(mode), mode=mode), workers, mode == "idle"
    )
    theirs, ours, native_subs, subs = run_pair(workers, keyed, data, HOPS, merged=True, stall_s=1e9)
    try:
        assert_same_rows(native_subs, subs)
    finally:
        ours.close()
        theirs.close()


def test_hop_forms_not_merged_say_why() -> None:
    conn = laminardb.open(":memory:", workers=2)
    try:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(
            "CREATE STREAM np AS SELECT COUNT(*) AS n FROM ev "
            "GROUP BY hop(ts, INTERVAL '1' SECOND, INTERVAL '2' SECOND) EMIT ON WINDOW CLOSE"
        )
        conn.execute(
            "CREATE STREAM odd AS SELECT hop(ts, INTERVAL '2' SECOND, INTERVAL '3' SECOND) AS w, "
            "COUNT(*) AS n FROM ev "
            "GROUP BY hop(ts, INTERVAL '2' SECOND, INTERVAL '3' SECOND) EMIT ON WINDOW CLOSE"
        )
        reasons = conn._streams.merges.reasons
        assert "not projected" in reasons["np"]
        assert "multiple of its slide" in reasons["odd"]
        for name in ("np", "odd"):
            with pytest.raises(laminardb.StreamError, match=name):
                conn.subscribe_stream(name)
    finally:
        conn.close()


def test_hop_plan_panes() -> None:
    catalog = Catalog()
    schema = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
    catalog.add(Relation("ev", "source", schema, SOURCE.format(partition=""), (), "ts"))
    planned = merge.plan("hg", HOPS["hg"], catalog)
    assert isinstance(planned, merge.MergePlan), planned
    assert (planned.size_ms, planned.slide_ms, planned.projected_window) == (3000, 1000, True)
    assert "% 1000 + 1000) % 1000 AS __w" in planned.partial_sql


TS_SCHEMA = pa.schema([("ts", pa.timestamp("us")), ("device", pa.string())])


def ts_rows(ms: list[int]) -> pa.Table:
    stamps = pa.array(ms, pa.int64()).cast(pa.timestamp("ms")).cast(pa.timestamp("us"))
    return pa.table({"ts": stamps, "device": ["a"] * len(ms)}, schema=TS_SCHEMA)


def test_timestamp_source_with_watermark_drops_late_rows_like_native() -> None:
    calls = [[1000, 1500], [5000], [2500, 4500, 6000], [9000], [3000, 8500]]
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    try:
        for conn in (theirs, ours):
            conn.execute(
                "CREATE SOURCE tev (ts TIMESTAMP, device VARCHAR, "
                "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
            )
            conn.execute("CREATE STREAM tf AS SELECT ts, device FROM tev")
        native_sub = theirs.subscribe_stream("tf")
        sub = ours.subscribe_stream("tf")
        theirs.start()
        ours.start()
        for ms in calls:
            theirs.insert("tev", ts_rows(ms))
            ours.insert("tev", ts_rows(ms))
        want = canon(read_native(native_sub))
        assert want, "native emitted nothing"
        got = read_until(sub, want)
        assert got == want, f"only ours {got - want}, only native {want - got}"
        count = "SELECT count(*) FROM tev"
        assert ours.sql(count).fetchall() == theirs.sql(count).fetchall()
    finally:
        ours.close()
        theirs.close()
