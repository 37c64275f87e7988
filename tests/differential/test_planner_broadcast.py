"""Differential cases for broadcast joins: a big relation joined with small ones.

A 3-worker cluster (keyed and round-robin big relations, every unkeyed insert split over
the workers) and one native instance hold the same rows; every query must give the single
instance's answer (`harness.compare_outcomes`), and the broadcast queries must be answered
by a broadcast plan (not by the gather fallback). Also: a worker error in the middle of a
broadcast query leaves no temporary relation behind and the cluster usable, concurrent
queries on one connection, the threshold, and that no temporary relation ever shows in
the catalog or metrics.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from harness import compare_outcomes, run_query
from pairs import check, open_pair, ordered

import laminardb
from laminardb.plan import broadcast, broadcast_run, distributed
from laminardb.wire import protocol

pytestmark = pytest.mark.timeout(120)

N = 240
DDL = {
    "f": ("CREATE SOURCE f (id BIGINT, g BIGINT, v DOUBLE, s VARCHAR)", " PARTITION BY (id)"),
    "r": ("CREATE SOURCE r (id BIGINT, g BIGINT, v DOUBLE, s VARCHAR)", ""),
    "d": ("CREATE SOURCE d (g BIGINT, name VARCHAR, w BIGINT)", ""),
    "e": ("CREATE SOURCE e (g BIGINT, label VARCHAR)", " PARTITION BY (g)"),
}
FACT = pa.table(
    {
        "id": pa.array(range(N), pa.int64()),
        "g": pa.array([None if i % 17 == 0 else i % 9 for i in range(N)], pa.int64()),
        "v": [float(i % 31) - 7.5 for i in range(N)],
        "s": [None if i % 13 == 0 else f"s{i % 5}" for i in range(N)],
    }
)
DATA = {
    "f": FACT,
    "r": FACT,
    "d": pa.table(
        {
            "g": pa.array([0, 1, 2, 2, 3, 5, None, 8], pa.int64()),
            "name": ["zero", "one", "two", "deux", None, "five", "none", "eight"],
            "w": pa.array([10, 20, 30, 31, None, 50, 60, 80], pa.int64()),
        }
    ),
    "e": pa.table({"g": pa.array([1, 2, 3, 4, None], pa.int64()), "label": list("abcde")}),
}
TABLE_SQL = [
    "CREATE TABLE t (g BIGINT PRIMARY KEY, tag VARCHAR)",
    "INSERT INTO t VALUES (1, 'x'), (5, 'y'), (8, 'z')",
]

BROADCAST = [
    # inner and left joins, keyed and round-robin big sides, NULL join keys on both sides
    "SELECT f.id, d.name FROM f JOIN d ON f.g = d.g",
    "SELECT r.id, d.name, d.w FROM r JOIN d ON r.g = d.g WHERE d.w > 20 AND r.v < 10",
    "SELECT f.id, f.g, d.name FROM f LEFT JOIN d ON f.g = d.g",
    "SELECT r.id, d.name FROM r LEFT JOIN d ON r.g = d.g AND d.w > 25 WHERE d.name IS NULL",
    "SELECT f.id, d.name FROM d RIGHT JOIN f ON f.g = d.g",
    "SELECT * FROM r JOIN d ON r.g = d.g",
    # several small relations (a keyed one and a table on one worker among them)
    "SELECT r.id, d.name, e.label FROM r JOIN d ON r.g = d.g LEFT JOIN e ON e.g = r.g",
    "SELECT f.id, e.label, t.tag FROM f JOIN e ON e.g = f.g LEFT JOIN t ON t.g = f.g",
    "SELECT f.id, d.name, e.label FROM f JOIN d ON f.g = d.g JOIN e ON e.g > 3",
    # ORDER BY / LIMIT / OFFSET / DISTINCT merged in the coordinator
    "SELECT r.id, d.name FROM r JOIN d ON r.g = d.g ORDER BY r.id DESC LIMIT 7",
    "SELECT r.id, d.w AS w FROM r LEFT JOIN d ON r.g = d.g ORDER BY w NULLS FIRST, 1 LIMIT 9 "
    "OFFSET 3",
    "SELECT DISTINCT d.name, r.s FROM r JOIN d ON r.g = d.g",
    "SELECT DISTINCT d.name FROM f JOIN d ON f.g = d.g ORDER BY 1 LIMIT 3",
    # semi-joins and sub-queries over small relations only
    "SELECT id, v FROM r WHERE g IN (SELECT g FROM d WHERE w >= 30)",
    "SELECT id FROM r WHERE g NOT IN (SELECT g FROM e WHERE g IS NOT NULL) AND v > 0",
    "SELECT id FROM f WHERE EXISTS (SELECT 1 FROM d WHERE d.g = f.g AND d.w > 40)",
    "SELECT id, v - (SELECT avg(w) FROM d) AS dv FROM r JOIN e ON e.g = r.g",
    # grouped by the big relation's key: runs whole per worker
    "SELECT f.id, count(*), max(d.name) FROM f JOIN d ON f.g = d.g GROUP BY f.id",
    # aggregates over the join: two-phase
    "SELECT d.name, count(*), sum(r.v), avg(r.v) FROM r JOIN d ON r.g = d.g GROUP BY d.name",
    "SELECT count(*), sum(d.w), min(r.s), max(r.v) FROM r LEFT JOIN d ON r.g = d.g",
    "SELECT d.name, count(r.id) AS n FROM r JOIN d ON r.g = d.g WHERE r.v > 0 GROUP BY d.name "
    "ORDER BY n DESC, d.name LIMIT 3",
    "SELECT e.label, count(DISTINCT f.s) FROM f JOIN e ON e.g = f.g GROUP BY e.label",
]

NOT_BROADCAST = [
    # a FULL join, or a join that keeps a small relation's rows: gathered, still exact
    "SELECT r.id, d.name FROM r FULL JOIN d ON r.g = d.g",
    "SELECT r.id, d.name FROM d LEFT JOIN r ON r.g = d.g",
    "SELECT d.name, count(r.id) FROM d LEFT JOIN r ON r.g = d.g GROUP BY d.name",
    # errors come back as the native class
    "SELECT r.id FROM r JOIN d ON r.g = d.nope",
    "SELECT g FROM r JOIN d ON r.g = d.g",
]


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, Any]]:
    """(single native instance, 3-worker cluster) holding the same rows."""
    with open_pair(DDL, DATA, 3, TABLE_SQL) as both:
        yield both


def _broadcast(cluster: Any, sql: str) -> pa.Table | None:
    """The broadcast plan's answer, None when no broadcast plan answers (the caller,
    `extended.run`, would then gather: a refusal raised by the probe counts as None)."""
    fetch = distributed.cluster_fetch(cluster._cluster)
    with cluster._cluster.lock:  # the request channel is not thread-safe (flusher thread)
        cluster._router.flush()  # rows still buffered in the coordinator
        try:
            return broadcast_run.run(sql, cluster._catalog, fetch)
        except distributed.Fallback:
            return None


def _temporary(cluster: Any) -> list[str]:
    """Every relation name on any worker that looks like a temporary one."""
    with cluster._cluster.lock:
        replies = cluster._cluster.broadcast(lambda rid: protocol.Call(rid, "list_tables", []))
    return [n for r in replies for n in r.value if str(n).startswith(broadcast.PREFIX)]


@pytest.mark.parametrize("sql", BROADCAST)
def test_broadcast_queries_match_native(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)
    assert _broadcast(pair[1], sql) is not None, f"{sql} fell back to gather"


@pytest.mark.parametrize("sql", NOT_BROADCAST)
def test_other_joins_match_native(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)
    assert _broadcast(pair[1], sql) is None


def test_no_temporary_relation_is_visible(pair: tuple[Any, Any]) -> None:
    cluster = pair[1]
    cluster.sql("SELECT f.id, d.name FROM f JOIN d ON f.g = d.g").to_arrow()
    assert not _temporary(cluster)
    assert sorted(cluster.list_tables()) == sorted(pair[0].list_tables())
    assert cluster.metrics().source_count == pair[0].metrics().source_count


def test_threshold_turns_broadcast_off(pair: tuple[Any, Any], monkeypatch: Any) -> None:
    sql = "SELECT r.id, d.name FROM r JOIN d ON r.g = d.g"
    monkeypatch.setattr(broadcast, "BROADCAST_ROWS", len(DATA["d"]) - 1)
    assert _broadcast(pair[1], sql) is None
    check(pair, sql)


def test_broadcast_rows_option() -> None:
    """`open(..., broadcast_rows=n)`: small sides over n rows are gathered (still exact)."""
    sql = "SELECT r.id, d.name FROM r JOIN d ON r.g = d.g ORDER BY r.id LIMIT 5"
    for limit, expected in ((len(DATA["d"]) - 1, False), (len(DATA["d"]), True)):
        conn = laminardb.open(":memory:", workers=2, split_rows=1, broadcast_rows=limit)
        try:
            for name in ("r", "d"):
                conn.execute(DDL[name][0] + DDL[name][1])
                conn.insert(name, DATA[name])
            assert (_broadcast(conn, sql) is not None) is expected
            assert conn.sql(sql).to_arrow().column(0).to_pylist() == [1, 2, 2, 3, 5]
        finally:
            conn.close()


@pytest.mark.parametrize("bad", [-1, "10", 2.5, True])
def test_bad_broadcast_rows_is_refused_before_any_worker_starts(bad: Any) -> None:
    with pytest.raises(ValueError, match="broadcast_rows"):
        laminardb.open(":memory:", workers=2, broadcast_rows=bad)


def test_worker_error_midway_leaves_nothing_behind(pair: tuple[Any, Any]) -> None:
    cluster = pair[1]
    sql = "SELECT r.id, d.name FROM r JOIN d ON r.g = d.g"
    plan = broadcast.choose(
        broadcast.candidates(sql, cluster._catalog), {"r": N, "d": len(DATA["d"])}
    )
    assert plan is not None
    # every worker fails in the query, after it created the temporary relation
    failing = dataclasses.replace(plan, worker_sql=plan.worker_sql + " WHERE r.nope > 1")
    fetch = distributed.cluster_fetch(cluster._cluster)
    with cluster._cluster.lock, pytest.raises(laminardb.QueryError, match="nope"):
        broadcast_run.execute(failing, cluster._catalog, fetch)
    assert not _temporary(cluster)
    check(pair, "SELECT r.id, d.name FROM r JOIN d ON r.g = d.g ORDER BY r.id LIMIT 5")
    assert _broadcast(cluster, sql) is not None


def test_concurrent_queries(pair: tuple[Any, Any]) -> None:
    single, cluster = pair
    queries = BROADCAST[:6]
    expected = {q: run_query(single, q) for q in queries}
    failures: list[str] = []

    def worker(offset: int) -> None:
        for i in range(len(queries)):
            q = queries[(i + offset) % len(queries)]
            diff = compare_outcomes(expected[q], run_query(cluster, q), ordered(q))
            if diff is not None:
                failures.append(f"{q}\n{diff}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[0]
    assert not _temporary(cluster)


def test_explain_shows_the_broadcast(pair: tuple[Any, Any]) -> None:
    cluster = pair[1]
    table = cluster.explain("SELECT r.id, d.name FROM r JOIN d ON r.g = d.g ORDER BY 1 LIMIT 3")
    rows = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=False))
    assert rows["distributed_plan"] == "broadcast"
    assert rows["workers"] == "0,1,2"
    assert rows["broadcast"] == "d (8 rows: g, name) as __bc_0"
    assert rows["bytes_shipped"].endswith("in all)")
    assert rows["worker_sql"] == (
        'SELECT r.id, d.name FROM r JOIN __bc_0 AS "d" ON r.g = d.g ORDER BY 1 LIMIT 3'
    )
    table = cluster.explain("SELECT d.name, count(*) FROM r JOIN d ON r.g = d.g GROUP BY d.name")
    rows = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=False))
    assert rows["distributed_plan"] == "broadcast, two-phase aggregation over the join"
    assert "JOIN __bc_0" in rows["worker_sql"]


def _fetches(cluster: Any, sql: str, monkeypatch: Any) -> list[str]:
    """The SQL the broadcast plan of `sql` sent through `fetch` (counts, small sides)."""
    seen: list[str] = []
    real = distributed.cluster_fetch

    def spying(inner: Any) -> Any:
        fetch = real(inner)

        def spy(text: str, shards: Any) -> Any:
            seen.append(text)
            return fetch(text, shards)

        spy.cluster = fetch.cluster  # type: ignore[attr-defined]
        return spy

    monkeypatch.setattr(distributed, "cluster_fetch", spying)
    assert _broadcast(cluster, sql) is not None
    monkeypatch.setattr(distributed, "cluster_fetch", real)
    return seen


def test_small_sides_are_reused_until_a_write(monkeypatch: Any) -> None:
    """A repeated join skips the count and the fetch of the small side; any write in
    between (an insert into either side, DDL, a worker restart) is seen by the next one."""
    sql = "SELECT r.id, d.name, d.w FROM r JOIN d ON r.g = d.g"
    with open_pair({k: DDL[k] for k in ("r", "d")}, {k: DATA[k] for k in ("r", "d")}, 2) as pair:
        single, cluster = pair
        assert any("FROM d" in s for s in _fetches(cluster, sql, monkeypatch))
        assert _fetches(cluster, sql, monkeypatch) == []
        check(pair, sql)
        more = pa.table(
            {"g": pa.array([4, 7], pa.int64()), "name": ["four", "seven"], "w": [40, 70]},
            schema=DATA["d"].schema,
        )
        for conn in pair:
            conn.insert("d", more)
        check(pair, sql)
        for conn in pair:
            conn.insert("r", DATA["r"].slice(0, 20))
        check(pair, sql)
        for conn in pair:
            conn.execute("DROP SOURCE d")
            conn.execute(DDL["d"][0])
            conn.insert("d", more)
        check(pair, sql)
        assert _fetches(cluster, sql, monkeypatch) == []
        before = cluster._cluster.epoch
        cluster.sql(sql).to_arrow()
        cluster.list_tables()
        assert cluster._cluster.epoch == before  # reads leave the epoch alone
        with cluster._cluster.lock:
            cluster._cluster.restart(1)  # a fresh, empty engine: what was read is stale
        assert cluster._cluster.epoch > before
        assert single is not None
