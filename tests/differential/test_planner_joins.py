"""Differential cases for joins, set operations, sub-queries and keyed windows.

One 3-worker cluster (every unkeyed insert split over the workers) and one native instance
hold the same rows; every query must give the single instance's answer, column types
included (`harness.compare_outcomes`). Queries a rule of `joins` / `compound` plans must
also be answered by that plan (not by the gather fallback), so a plan that silently hands
back shows up here as a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pairs import check, open_pair

from laminardb.plan import compound, distributed, extended, joinagg, joins

pytestmark = pytest.mark.timeout(120)

DDL = {
    "a": ("CREATE SOURCE a (k BIGINT, v BIGINT, s VARCHAR, d DOUBLE)", " PARTITION BY (k)"),
    "b": ("CREATE SOURCE b (k INT, w BIGINT, s VARCHAR)", " PARTITION BY (k)"),
    "c": ("CREATE SOURCE c (k BIGINT, s VARCHAR, x DOUBLE)", " PARTITION BY (k, s)"),
    "r": ("CREATE SOURCE r (k BIGINT, v BIGINT)", ""),
}
DATA = {
    "a": pa.table(
        {
            "k": pa.array([1, 2, 3, 4, 5, None, 7, 8, 9, 10, 11, 12], pa.int64()),
            "v": pa.array([10, 20, 30, None, 50, 60, 70, 80, 90, 100, 110, 120], pa.int64()),
            "s": ["x", "y", None, "x", "z", "y", "x", "w", "y", "y", "x", None],
            "d": [1.5, 2.5, None, 0.5, -1.0, 2.0, 3.0, 4.5, -0.0, 0.0, 7.25, 1e10],
        }
    ),
    "b": pa.table(
        {
            "k": pa.array([1, 1, 3, 9, None, 5, 8, 12, 13, 2], pa.int32()),
            "w": pa.array([100, 101, 300, 900, 0, 500, None, 1200, 1300, 200], pa.int64()),
            "s": ["x", "q", "y", "x", None, "z", "w", "y", "q", "y"],
        }
    ),
    "c": pa.table(
        {
            "k": pa.array([1, 1, 2, 3, 3, 4], pa.int64()),
            "s": ["x", "y", "x", None, "x", "y"],
            "x": [0.5, 1.5, 2.5, 3.5, None, 5.5],
        }
    ),
    "r": pa.table(
        {"k": pa.array([1, 2, 2, 3, 20], pa.int64()), "v": pa.array([5, 6, 7, 8, 9], pa.int64())}
    ),
}
TABLE_SQL = [
    "CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR, score DOUBLE)",
    "INSERT INTO t VALUES (1, 'one', 1.5), (2, 'two', NULL), (3, 'three', 3.5)",
    "CREATE TABLE u (id BIGINT PRIMARY KEY, label VARCHAR)",
    "INSERT INTO u VALUES (1, 'x'), (3, 'y'), (4, 'z')",
]

PLANNED = [
    # co-partitioned joins, every join kind
    "SELECT a.k, a.v, b.w FROM a JOIN b ON a.k = b.k",
    "SELECT a.k, a.v, b.w, b.s FROM a LEFT JOIN b ON a.k = b.k",
    "SELECT a.k, b.k, b.w FROM a RIGHT JOIN b ON b.k = a.k AND a.v > 10",
    "SELECT * FROM a FULL OUTER JOIN b ON a.k = b.k",
    "SELECT a.k, a.v FROM a JOIN b ON a.k = b.k AND a.s = b.s WHERE b.w > 100",
    "SELECT x.k, y.w FROM a AS x LEFT JOIN b y ON x.k = y.k WHERE y.k IS NULL",
    "SELECT a.k, b.w, b2.s FROM a JOIN b ON a.k = b.k LEFT JOIN b AS b2 ON b2.k = a.k",
    "SELECT c.k, c.s, e.x FROM c JOIN c AS e ON c.k = e.k AND c.s = e.s",
    # top-N and ORDER BY over joins
    "SELECT a.k, a.v, b.w FROM a JOIN b ON a.k = b.k ORDER BY b.w DESC LIMIT 2",
    "SELECT a.k, a.v AS x, b.w FROM a JOIN b ON a.k = b.k ORDER BY x DESC LIMIT 2 OFFSET 1",
    "SELECT a.k, b.w FROM a LEFT JOIN b ON a.k = b.k ORDER BY 2 NULLS FIRST, 1 LIMIT 4",
    "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k ORDER BY k, w LIMIT 3",
    # GROUP BY the key of a preserved side
    "SELECT a.k, count(*), sum(b.w) FROM a JOIN b ON a.k = b.k GROUP BY a.k",
    "SELECT a.k, count(b.w) AS n FROM a LEFT JOIN b ON a.k = b.k GROUP BY a.k "
    "ORDER BY n DESC, a.k LIMIT 3",
    "SELECT b.k, count(a.v), min(a.s) FROM a RIGHT JOIN b ON a.k = b.k GROUP BY b.k "
    "HAVING count(*) > 0",
    # windows partitioned by the key, DISTINCT including it
    "SELECT k, v, row_number() OVER (PARTITION BY k ORDER BY v) AS rn FROM a",
    "SELECT k, s, sum(x) OVER (PARTITION BY s, k) AS t FROM c",
    "SELECT DISTINCT k, s FROM a",
    "SELECT DISTINCT a.k, b.s FROM a JOIN b ON a.k = b.k",
    # UNION ALL / UNION
    "SELECT k, v FROM a UNION ALL SELECT k, v FROM r",
    "SELECT k, v FROM a UNION SELECT k, v FROM r",
    "SELECT k FROM a UNION SELECT k FROM b ORDER BY k LIMIT 4",
    "SELECT k, v FROM a WHERE v > 50 UNION ALL SELECT k, w FROM b ORDER BY 1, 2 LIMIT 5",
    "SELECT k, count(*) FROM a GROUP BY k UNION ALL SELECT k, count(*) FROM b GROUP BY k",
    "SELECT id, name FROM t UNION ALL SELECT k, s FROM a",
    # the whole query on the tables' worker
    "SELECT t.id, t.name, u.label FROM t LEFT JOIN u ON t.id = u.id",
    "SELECT count(*), max(score) FROM t JOIN u ON t.id >= u.id",
    # sub-queries and CTEs: each planned on its own, the outer query in the merge
    "WITH c2 AS (SELECT k, sum(v) AS total FROM a GROUP BY k) SELECT * FROM c2 WHERE total > 20",
    "WITH x AS (SELECT s, count(*) AS n FROM a GROUP BY s), y AS (SELECT s, max(w) AS m "
    "FROM b GROUP BY s) SELECT x.s, x.n, y.m FROM x JOIN y ON x.s = y.s",
    "SELECT count(*) FROM (SELECT a.k FROM a JOIN b ON a.k = b.k) AS j",
    "SELECT q.s, q.c FROM (SELECT s, count(*) AS c FROM a GROUP BY s) q ORDER BY q.c DESC, "
    "q.s LIMIT 2",
    "SELECT k FROM a INTERSECT SELECT k FROM b",
    "SELECT k FROM a EXCEPT SELECT k FROM b",
    "SELECT (SELECT max(w) FROM b) - (SELECT min(v) FROM a) AS spread",
    # co-partitioned semi-joins: key IN (SELECT key ...) as a WHERE conjunct
    "SELECT * FROM a WHERE k IN (SELECT k FROM b WHERE w > 100)",
    "SELECT a.k, count(*) FROM a WHERE v > 10 AND k IN (SELECT k FROM b WHERE s IS NULL) "
    "GROUP BY a.k",
    "SELECT s, avg(v) FROM a GROUP BY s UNION ALL SELECT s, avg(w) FROM b GROUP BY s",
]

JOIN_AGGREGATES = [
    # two-phase aggregation over a co-partitioned join not grouped by a key (joinagg)
    "SELECT a.s, count(*) FROM a JOIN b ON a.k = b.k GROUP BY a.s",
    "SELECT count(*), sum(w), min(a.s), max(d), avg(v) FROM a JOIN b ON a.k = b.k WHERE v > 10",
    "SELECT b.s, avg(w) AS m FROM a LEFT JOIN b ON a.k = b.k GROUP BY b.s ORDER BY m DESC LIMIT 2",
    "SELECT b.w % 2 AS p, count(a.s) AS n FROM a FULL JOIN b ON a.k = b.k GROUP BY b.w % 2 "
    "HAVING count(*) > 1 ORDER BY n, p LIMIT 10",
    "SELECT a.s, sum(v * w), count(DISTINCT b.s), bool_or(w > 250) FROM a RIGHT JOIN b "
    "ON a.k = b.k AND a.v > 20 GROUP BY a.s",
    "SELECT count(*), sum(b2.w) FROM a JOIN b ON a.k = b.k JOIN b AS b2 ON b2.k = a.k",
]

GATHERED = [
    "SELECT a.k, b.w, c.x FROM a JOIN b ON a.k = b.k LEFT JOIN c ON c.k = a.k",  # c: (k, s)
    "SELECT a.k, b.w FROM a JOIN b ON a.s = b.s",
    "SELECT a.k, r.v FROM a JOIN r ON a.k = r.k",
    "SELECT b.k, count(*) FROM a LEFT JOIN b ON a.k = b.k GROUP BY b.k",
    "SELECT * FROM a WHERE k NOT IN (SELECT k FROM b WHERE w > 100)",
    "SELECT * FROM a WHERE k IN (SELECT k FROM b) OR v > 50",
    "SELECT * FROM a WHERE k IN (SELECT k FROM b WHERE b.s = a.s)",
    "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
    "SELECT a.k, t.name FROM a JOIN t ON a.k = t.id",
    "SELECT v, sum(v) OVER (PARTITION BY s) FROM a",
    # errors: the native class, through the gather path
    "SELECT a.k FROM a JOIN b ON a.k = b.nope",
    "SELECT k FROM a JOIN b ON a.k = b.k",
    "SELECT k FROM a UNION SELECT k, w FROM b",
    "WITH x AS (SELECT k FROM a) SELECT nope FROM x",
]


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, Any]]:
    """(single native instance, 3-worker cluster) holding the same rows."""
    with open_pair(DDL, DATA, 3, TABLE_SQL) as both:
        yield both


@pytest.mark.parametrize("sql", PLANNED)
def test_planned_queries_match_native(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)
    cluster = pair[1]
    catalog = cluster._catalog
    assert joins.plan(sql, catalog) is not None or compound.plan(sql, catalog) is not None
    fetch = distributed.cluster_fetch(cluster._cluster)
    with cluster._cluster.lock:  # the request channel is not thread-safe (flusher thread)
        assert extended.run(sql, catalog, fetch) is not None, f"{sql} fell back to gather"


@pytest.mark.parametrize("sql", JOIN_AGGREGATES)
def test_join_aggregates_match_native(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)
    cluster = pair[1]
    assert joinagg.plan(sql, cluster._catalog) is not None
    fetch = distributed.cluster_fetch(cluster._cluster)
    with cluster._cluster.lock:
        assert extended.run(sql, cluster._catalog, fetch) is not None, f"{sql} fell back"


@pytest.mark.parametrize("sql", GATHERED)
def test_other_queries_match_native(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)


def test_explain_shows_the_plan(pair: tuple[Any, Any]) -> None:
    cluster = pair[1]
    table = cluster.explain("SELECT a.k, b.w FROM a JOIN b ON a.k = b.k ORDER BY 2 LIMIT 3")
    rows = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=False))
    assert rows["distributed_plan"] == "co-partitioned"
    assert rows["workers"] == "0,1,2"
    assert rows["worker_sql"] == "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k ORDER BY 2 LIMIT 3"
    assert rows["merge"] == 'SELECT * FROM __ldb_partials ORDER BY ("_p1") ASC NULLS LAST LIMIT 3'
    table = cluster.explain("SELECT count(*) FROM (SELECT k FROM a UNION ALL SELECT k FROM b) x")
    keys = table.column(0).to_pylist()
    assert keys[0] == "distributed_plan" and table.column(1)[0].as_py() == "compound"
    assert "__ldb_q0.worker_sql" in keys
