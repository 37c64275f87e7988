"""The merge plan and per-window merge state (laminardb/streams/merge.py), without processes.

Differential in one process: several native instances stand in for the workers (each runs
the plan's partial SQL over its share of every insert call, with the coordinator's
watermark set before a call that has late rows, as the hub does) and `WindowMerger` merges
their partials; one more native instance runs the stream itself. The multiset of rows per
window must be the same.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.streams import merge
from workers.streams import quiesce

SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
SOURCE = (
    "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)"
)
STREAMS = {
    "global": "CREATE STREAM s AS SELECT tumble(ts, INTERVAL '5' SECOND) AS ws, COUNT(*) AS cnt, "
    "SUM(value) AS total, AVG(value) AS av, MIN(value) AS mn, MAX(ts) AS mx FROM ev "
    "GROUP BY tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE",
    "by_device": "CREATE STREAM s AS SELECT device, tumble(ts, INTERVAL '5' SECOND) AS ws, "
    "COUNT(*) AS cnt, SUM(value) AS total FROM ev "
    "GROUP BY device, tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE",
    "filtered_unprojected": "CREATE STREAM s AS SELECT device, COUNT(value) AS n, AVG(value) AS av "
    "FROM ev WHERE value > 3 GROUP BY device, tumble(ts, INTERVAL '2' SECOND) EMIT FINAL",
}


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(Relation("ev", "source", SCHEMA, SOURCE, (), "ts"))
    return cat


def batch(rows: list[tuple[int, str, float]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"ts": t, "device": d, "value": v} for t, d, v in rows], schema=SCHEMA
    )


def drain(sub: Any, settle_ms: int = 400) -> list[pa.Table]:
    out: list[pa.Table] = []
    while True:
        try:
            got = sub.next_timeout(settle_ms)
        except Exception:
            return out
        if got is None:
            return out
        out.append(got.to_arrow())


def rows_of(tables: list[pa.Table]) -> Counter[tuple[Any, ...]]:
    """Rows as tuples, floats rounded (AVG's last digit depends on the summation order)."""
    return Counter(
        tuple(round(v, 9) if isinstance(v, float) else v for v in row.values())
        for table in tables
        for row in table.to_pylist()
    )


def ticks(seed: int, late: bool) -> list[list[tuple[int, str, float]]]:
    rng = random.Random(seed)
    out = []
    for i in range(1, 16):
        now = 1000 * i
        rows = [
            (
                now - rng.randint(0, 3500 if late else 1500),
                f"d{rng.randint(0, 5)}",
                float(rng.randint(1, 9)),
            )
            for _ in range(rng.randint(1, 6))
        ]
        out.append(rows)
    out.append([(40_000, "d0", 1.0)])
    return out


def test_plan_rejects_what_it_cannot_merge() -> None:
    cat = catalog()
    assert isinstance(
        merge.plan("s", STREAMS["global"].replace("EMIT ON WINDOW CLOSE", ""), cat), str
    )
    distinct = STREAMS["by_device"].replace("COUNT(*)", "COUNT(DISTINCT value)")
    two = distinct.replace("SUM(value)", "SUM(DISTINCT ts)")
    assert "DISTINCT" in str(merge.plan("s", two, cat))  # one DISTINCT argument is merged
    assert isinstance(merge.plan("s", distinct, cat), merge.MergePlan)
    assert isinstance(merge.plan("s", STREAMS["by_device"].replace("ev", "nope"), cat), str)
    p = merge.plan("s", STREAMS["by_device"], cat)
    assert isinstance(p, merge.MergePlan) and p.size_ms == 5000 and p.projected_window


def test_watermark_of_source() -> None:
    rel = catalog().get("ev")
    assert rel is not None and merge.watermark_of(rel) == ("ts", 2000)
    other = Relation(
        "x", "source", SCHEMA, "CREATE SOURCE x (ts BIGINT, WATERMARK FOR ts AS ts - 5000)"
    )
    assert merge.watermark_of(other) == ("ts", 1000)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("form", sorted(STREAMS))
@pytest.mark.parametrize("late", [False, True])
def test_merged_windows_match_one_instance(form: str, workers: int, late: bool) -> None:
    sql = STREAMS[form]
    p = merge.plan("s", sql, catalog())
    assert isinstance(p, merge.MergePlan), p
    one = native.open(":memory:")
    one.execute(SOURCE)
    one.execute(sql)
    one.start()
    one_sub = one.subscribe_stream("s")
    shards = []
    for _ in range(workers):
        w = native.open(":memory:")
        w.execute(SOURCE)
        w.execute(f"CREATE STREAM {p.hidden} AS {p.partial_sql}")
        w.start()
        shards.append((w, w.subscribe_stream(p.hidden), w.writer("ev")))
    schema = one.schema("s")
    merger = merge.WindowMerger(p, schema)
    clock = merge.SourceClock("ts", 2000)
    mine: list[pa.Table] = []
    last_insert = time.monotonic()
    try:
        for i, rows in enumerate(ticks(workers * 7 + len(form), late)):
            b = batch(rows)
            one.insert("ev", b)
            step = clock.observe(pa.table(b), buffered=False)
            if step.set_watermark:  # as Engine.watermark: after the pending batches' cycle
                for w, _, writer in shards:
                    quiesce(w, last_insert)
                    writer.watermark(step.watermark)
            merger.expect(pa.table(b), step.live, step.watermark, step.any_live)
            owner = i % workers
            if workers > 1 and len(rows) > 1:  # split a call over two workers
                half = len(rows) // 2
                shards[owner][0].insert("ev", batch(rows[:half]))
                shards[(owner + 1) % workers][0].insert("ev", batch(rows[half:]))
            else:
                shards[owner][0].insert("ev", b)
            last_insert = time.monotonic()
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while merger.open_windows and time.monotonic() < deadline:
            for _, sub, _ in shards:
                for t in drain(sub, 50):
                    merger.add(t)
            out = merger.ready()
            if out is not None:
                mine.append(out)
            if merger.closable < 0:
                break
            if not any(s + p.size_ms <= merger.closable for s in merger._windows):
                break
        theirs = drain(one_sub, 600)
        deadline = time.monotonic() + 10  # a loaded machine may run the last cycle late
        while rows_of(theirs) != rows_of(mine) and time.monotonic() < deadline:
            theirs += drain(one_sub, 200)
    finally:
        for w, sub, _ in shards:
            sub.cancel()
            w.close()
        one_sub.cancel()
        one.close()
    assert merger.stalled == 0
    got = rows_of(mine)
    want = rows_of(theirs)
    assert got == want, f"only ours {got - want}, only native {want - got}"
