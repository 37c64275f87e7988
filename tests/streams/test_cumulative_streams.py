"""Non-windowed streaming aggregates merged across workers, against one native instance.

Natively such a stream is cumulative: every cycle with data emits the full current result of
all groups (research §4.6). The cluster merges the workers' latest partial snapshots
(laminardb/streams/cumulative.py). The same DDL and insert calls go to one `laminardb_native`
instance and to a cluster whose source is round-robin or keyed on a column the stream does
not group by. Checked: the last emission after the inserts settle is native's last emission
(as a multiset), and every emission is a consistent full snapshot (one row per group; the
global count is always the number of rows of a prefix of the insert calls).

Waits poll with deadlines, never sleep for a fixed time.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest
from test_merged_streams import QUIESCED_MS, canon, native_batches, restart_worker

import laminardb
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.streams import merge
from laminardb.streams.cumulative import CumulativeMerger
from workers.streams import quiesce

pytestmark = pytest.mark.timeout(120)

Row = tuple[Any, ...]
SCHEMA = pa.schema(
    [("ts", pa.int64()), ("device", pa.string()), ("grp", pa.string()), ("value", pa.float64())]
)
SOURCE = "CREATE SOURCE ev (ts BIGINT, device VARCHAR, grp VARCHAR, value DOUBLE{wm}){part}"
WATERMARK = ", WATERMARK FOR ts AS ts - INTERVAL '2' SECOND"
STREAMS = {
    "tot": "CREATE STREAM tot AS SELECT COUNT(*) AS n, SUM(value) AS total, AVG(value) AS av, "
    "MIN(value) AS lo, MAX(ts) AS hi, COUNT(value) AS nv FROM ev",
    "bygrp": "CREATE STREAM bygrp AS SELECT grp, COUNT(*) AS n, SUM(value) AS s, "
    "AVG(value) AS av, MAX(device) AS top FROM ev WHERE value > 2 GROUP BY grp",
}
DISTINCT = {
    "dist": "CREATE STREAM dist AS SELECT grp, COUNT(DISTINCT device) AS d, COUNT(*) AS n "
    "FROM ev GROUP BY grp",
}


def ticks(seed: int, n: int = 8, late: bool = False) -> list[list[Row]]:
    """Rows per insert call: (ts, device, grp, value); some NULL groups and values; whole
    numbers (exact float sums). `late`: some rows far behind the watermark or without ts."""
    rng = random.Random(seed)
    calls = []
    for i in range(1, n + 1):
        rows = []
        for _ in range(rng.randint(2, 9)):
            ts: int | None = 1000 * i + rng.randint(0, 900)
            if late and rng.random() < 0.2:
                ts = 1000 * i - 6000
            if late and rng.random() < 0.1:
                ts = None  # dropped by the engine's streams on a source with a watermark
            grp = rng.choice(["x", "y", "z", None])
            value = None if rng.random() < 0.1 else float(rng.randint(0, 9))
            rows.append((ts, f"d{rng.randint(0, 11)}", grp, value))
        calls.append(rows)
    return calls


def arrow(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, r, strict=True)) for r in rows], SCHEMA)


def native_last(sub: Any, quiet_ms: int = 1200) -> Counter[Row]:
    """Native's last emission: batches until it stays quiet for `quiet_ms`."""
    last: list[Row] = []
    for last in native_batches(sub, quiet_ms):  # noqa: B007 - the last one is wanted
        pass
    return canon(last)


def our_emissions(sub: Any, want: Counter[Row], timeout_s: float = 30.0) -> list[list[Row]]:
    """Our emissions until one equals `want` (or the deadline)."""
    seen: list[list[Row]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (seen and canon(seen[-1]) == want):
        try:
            batch = sub.next_timeout(100)
        except laminardb.SubscriptionError as exc:
            assert exc.code == 502
            continue
        assert batch is not None
        seen.append(batch.fetchall())
    return seen


def run(workers: int, keyed: bool, streams: dict[str, str], late: bool = False) -> None:
    data = ticks(seed=workers * 13 + keyed * 5 + late, late=late)
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=workers)
    try:
        for conn, part in ((theirs, ""), (ours, " PARTITION BY (device)" if keyed else "")):
            conn.execute(SOURCE.format(wm=WATERMARK if late else "", part=part))
            for sql in streams.values():
                conn.execute(sql)
        if workers > 1:
            assert set(ours._streams.merges.runs) == set(streams), ours._streams.merges.reasons
        native_subs = {name: theirs.subscribe_stream(name) for name in streams}
        subs = {name: ours.subscribe_stream(name) for name in streams}
        theirs.start()
        ours.start()
        for rows in data:
            theirs.insert("ev", arrow(rows))
            ours.insert("ev", arrow(rows))
        quiesce(theirs, time.monotonic())  # native has produced everything: a short quiet
        prefixes = {0, *itertools.accumulate(len(rows) for rows in data)}
        for name, sub in subs.items():
            want = native_last(native_subs[name], QUIESCED_MS)
            assert want, f"native {name} emitted nothing"
            seen = our_emissions(sub, want)
            assert seen and canon(seen[-1]) == want, (
                f"{name}: last {canon(seen[-1]) if seen else None}, native {want}"
            )
            for rows in seen:  # each a consistent full snapshot: one row per group
                keys = [row[0] for row in rows] if name != "tot" else []
                assert len(keys) == len(set(keys)), f"{name}: a group twice in {rows}"
                if name == "tot" and not late:
                    assert rows[0][0] in prefixes, f"tot: {rows} counts part of a call"
            if name == "tot" and not late:
                counts = [rows[0][0] for rows in seen]
                assert counts == sorted(counts)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(("workers", "keyed"), [(2, False), (3, True)])
def test_cumulative_streams_match_native(workers: int, keyed: bool) -> None:
    run(workers, keyed, STREAMS)


@pytest.mark.parametrize(("workers", "keyed"), [(3, False), (2, True)])
@pytest.mark.slow
def test_cumulative_streams_match_native_more(workers: int, keyed: bool) -> None:
    run(workers, keyed, STREAMS)


def test_cumulative_late_rows_and_distinct_match_native() -> None:
    run(2, False, {"tot": STREAMS["tot"], **DISTINCT}, late=True)


def test_plan_of_a_cumulative_stream() -> None:
    catalog = Catalog()
    catalog.add(Relation("ev", "source", SCHEMA, SOURCE, (), None))
    planned = merge.plan("bygrp", STREAMS["bygrp"], catalog)
    assert isinstance(planned, merge.MergePlan) and planned.cumulative
    assert "__w" not in planned.partial_sql and "TUMBLE" not in planned.partial_sql
    assert planned.partial_sql.startswith("SELECT grp AS __g0, COUNT(*) AS __n, COUNT(CASE")
    glob = merge.plan("tot", STREAMS["tot"], catalog)
    assert isinstance(glob, merge.MergePlan) and "GROUP BY" not in glob.partial_sql
    having = (
        "CREATE STREAM h AS SELECT grp, COUNT(*) AS n FROM ev GROUP BY grp HAVING SUM(value) > 2"
    )
    assert "HAVING" in str(merge.plan("h", having, catalog))
    emit = "CREATE STREAM e AS SELECT COUNT(*) AS n FROM ev EMIT ON WINDOW CLOSE"
    assert "without a window" in str(merge.plan("e", emit, catalog))
    repeated = "CREATE STREAM r AS SELECT COUNT(*) AS a, COUNT(*) AS b FROM ev"
    assert "repeats an aggregate" in str(merge.plan("r", repeated, catalog))
    shared_sql = "CREATE STREAM s AS SELECT COUNT(*) AS n, SUM(value) AS s, AVG(value) AS a FROM ev"
    planned = merge.plan("s", shared_sql, catalog)
    assert isinstance(planned, merge.MergePlan)
    assert planned.partial_sql == (  # no aggregate twice: the engine would emit per cycle
        "SELECT COUNT(*) AS __n, SUM(value) AS __a1, COUNT(value) AS __a2c FROM ev"
    )


def test_merger_emits_only_complete_snapshots_whatever_the_batching() -> None:
    catalog = Catalog()
    catalog.add(Relation("ev", "source", SCHEMA, SOURCE, (), None))
    planned = merge.plan(
        "c", "CREATE STREAM c AS SELECT grp, COUNT(*) AS n FROM ev GROUP BY grp", catalog
    )
    assert isinstance(planned, merge.MergePlan)
    schema = pa.schema([("grp", pa.string()), ("n", pa.int64())])
    merger = CumulativeMerger(planned, schema, stall_s=1e9)

    def part(rows: list[tuple[str | None, int]]) -> pa.Table:
        return pa.table({"__g0": [g for g, _ in rows], "__n": [n for _, n in rows]})

    def emitted() -> set[Row] | None:
        table = merger.ready()
        return None if table is None else {tuple(r.values()) for r in table.to_pylist()}

    merger.expect_rows(5)
    merger.add(part([("a", 2)]), shard=0)  # one cycle of worker 0, in two batches
    assert emitted() is None
    merger.add(part([(None, 1)]), shard=0)
    assert emitted() is None  # worker 1's 2 rows are not in yet
    merger.add(part([("a", 2)]), shard=1)
    assert emitted() == {("a", 4), (None, 1)}
    assert emitted() is None  # nothing new
    merger.add(part([("a", 3)]), shard=1)  # ahead of the insert call's count: wait
    assert emitted() is None
    merger.expect_rows(1)
    assert emitted() == {("a", 5), (None, 1)}
    assert merger.lose_open() and emitted() is None


def test_a_worker_restart_ends_running_totals_until_the_stream_is_recreated(
    tmp_path: Any,
) -> None:
    """Natively a new stream counts from its creation; after a worker restart the cluster's
    totals cannot be merged, so subscribers are told and re-creating the stream starts anew."""
    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute(SOURCE.format(wm="", part=""))
        db.execute(STREAMS["tot"])
        first = db.subscribe_stream("tot")
        db.start()
        db.insert("ev", arrow(ticks(1, n=1)[0]))
        restart_worker(db, 1)
        # Told either way, naming the worker: by the stream receiver that sees it dead
        # ("exited ... results lost") or by the restart ("re-create the stream"), whichever
        # comes first (both race on the worker's death).
        told = r"worker 1 .*(re-create the stream|exited with code)"
        with pytest.raises(laminardb.SubscriptionError, match=told):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _next_or_none(first)
        with pytest.raises(laminardb.StreamError, match="restarted"):
            db.subscribe_stream("tot")
        db.execute("DROP STREAM tot")
        db.execute(STREAMS["tot"])
        later = db.subscribe_stream("tot")
        rows = [(1, "d1", "x", 2.0), (2, "d2", None, 4.0), (3, "d3", "y", None)]
        db.insert("ev", arrow(rows))
        seen = our_emissions(later, Counter({(3, 6.0, 3.0, 2.0, 3, 2): 1}))
        assert seen and canon(seen[-1]) == Counter({(3, 6.0, 3.0, 2.0, 3, 2): 1})


def _next_or_none(sub: Any) -> None:
    """One poll of `sub`; timeouts are not errors (a failure is)."""
    try:
        sub.next_timeout(200)
    except laminardb.SubscriptionError as exc:
        if exc.code == 502:
            return
        raise
