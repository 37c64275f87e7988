"""Golden tests of the shard-local (`joins`) and compound rewrites: input SQL -> plan.

Pure planning (no cluster): each case pins the SQL every worker runs and the merge, or the
pieces and the merge of a compound plan, or that the query is refused (left to the gather
path). That the plans give the single instance's answers is checked by
`tests/differential/test_planner_joins.py` and `tests/plan/test_properties.py`.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import compound, extended, joins
from laminardb.plan.joins import LocalRule

pytestmark = pytest.mark.timeout(60)

SCHEMA = pa.schema([("k", pa.int32()), ("v", pa.int64()), ("d", pa.float64()), ("s", pa.string())])
P = "__ldb_partials"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """`a`, `b` keyed on k (int32 / int64), `f` keyed on d (float), `c` keyed on (k, s),
    `r` spread round-robin, `h`, `h2` tables on worker 0, `h1` a table on worker 1."""
    found = Catalog()
    found.add(Relation("a", "source", SCHEMA, "", partition_by=("k",)))
    wide = pa.schema([("k", pa.int64()), ("w", pa.int64()), ("s", pa.string())])
    found.add(Relation("b", "source", wide, "", partition_by=("k",)))
    found.add(Relation("f", "source", SCHEMA, "", partition_by=("d",)))
    found.add(Relation("c", "source", SCHEMA, "", partition_by=("k", "s")))
    found.add(Relation("r", "source", SCHEMA, ""))
    found.add(Relation("h", "table", SCHEMA, "", home=0))
    found.add(Relation("h2", "table", SCHEMA, "", home=0))
    found.add(Relation("h1", "table", SCHEMA, "", home=1))
    return found


def local(catalog: Catalog, sql: str) -> tuple[str, tuple[int, ...] | None, str, str | None]:
    found = joins.plan(sql, catalog)
    assert found is not None, sql
    return found.rule.value, found.shards, found.worker_sql, found.merge_sql


CO_PARTITIONED = [
    # joins on the whole key: the query runs per worker, results are concatenated
    (
        "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k",
        "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k",
        None,
    ),
    (
        "SELECT * FROM a LEFT JOIN b ON b.k = a.k AND a.v > 1 WHERE b.w IS NULL",
        "SELECT * FROM a LEFT JOIN b ON b.k = a.k AND a.v > 1 WHERE b.w IS NULL",
        None,
    ),
    (
        "SELECT * FROM a x FULL OUTER JOIN b AS y ON x.k = y.k",
        "SELECT * FROM a x FULL OUTER JOIN b AS y ON x.k = y.k",
        None,
    ),
    # three relations, each joined on the key of an earlier one
    (
        "SELECT a.k FROM a JOIN b ON a.k = b.k RIGHT JOIN a AS z ON z.k = b.k",
        "SELECT a.k FROM a JOIN b ON a.k = b.k RIGHT JOIN a AS z ON z.k = b.k",
        None,
    ),
    # composite keys: every key column paired
    (
        "SELECT c.v FROM c JOIN c AS e ON c.s = e.s AND e.k = c.k",
        "SELECT c.v FROM c JOIN c AS e ON c.s = e.s AND e.k = c.k",
        None,
    ),
    # top-N: each worker keeps offset + limit rows, the merge sorts and cuts
    (
        "SELECT a.k, b.w AS x FROM a JOIN b ON a.k = b.k ORDER BY x DESC, 1 LIMIT 3 OFFSET 2",
        "SELECT a.k, b.w AS x FROM a JOIN b ON a.k = b.k ORDER BY x DESC, 1 LIMIT 5",
        f'SELECT * FROM {P} ORDER BY ("_p1") DESC NULLS FIRST, ("_p0") ASC NULLS LAST '
        "LIMIT 3 OFFSET 2",
    ),
    (
        "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k ORDER BY b.w NULLS FIRST LIMIT 2",
        "SELECT a.k, b.w FROM a JOIN b ON a.k = b.k ORDER BY b.w NULLS FIRST LIMIT 2",
        f'SELECT * FROM {P} ORDER BY ("_p1") ASC NULLS FIRST LIMIT 2',
    ),
    # ORDER BY without LIMIT: workers do not sort, the merge does
    (
        "SELECT a.k FROM a JOIN b ON a.k = b.k ORDER BY 1",
        "SELECT a.k FROM a JOIN b ON a.k = b.k",
        f'SELECT * FROM {P} ORDER BY ("_p0") ASC NULLS LAST',
    ),
    # GROUP BY the key of a side no outer join null-extends
    (
        "SELECT a.k, count(*) FROM a LEFT JOIN b ON a.k = b.k GROUP BY a.k",
        "SELECT a.k, count(*) FROM a LEFT JOIN b ON a.k = b.k GROUP BY a.k",
        None,
    ),
    (
        "SELECT b.k AS key, sum(a.v) FROM a RIGHT JOIN b ON a.k = b.k GROUP BY 1 LIMIT 4",
        "SELECT b.k AS key, sum(a.v) FROM a RIGHT JOIN b ON a.k = b.k GROUP BY 1 LIMIT 4",
        f"SELECT * FROM {P} LIMIT 4",
    ),
    # window functions partitioned by the key, DISTINCT including the key
    (
        "SELECT k, row_number() OVER (PARTITION BY k ORDER BY v) AS n FROM a",
        "SELECT k, row_number() OVER (PARTITION BY k ORDER BY v) AS n FROM a",
        None,
    ),
    (
        "SELECT DISTINCT s, k FROM a",
        "SELECT DISTINCT s, k FROM a",
        None,
    ),
    # semi-join on the key, as a WHERE conjunct
    (
        "SELECT * FROM a WHERE v > 1 AND k IN (SELECT b.k FROM b WHERE w < 3)",
        "SELECT * FROM a WHERE v > 1 AND k IN (SELECT b.k FROM b WHERE w < 3)",
        None,
    ),
    # UNION ALL: concatenation; UNION: DISTINCT again in the merge
    (
        "SELECT k, v FROM a UNION ALL SELECT k, v FROM r WHERE v > 0",
        "SELECT k, v FROM a UNION ALL SELECT k, v FROM r WHERE v > 0",
        None,
    ),
    (
        "SELECT k FROM a UNION SELECT k FROM b ORDER BY k LIMIT 3",
        "SELECT k FROM a UNION SELECT k FROM b ORDER BY k LIMIT 3",
        f'SELECT DISTINCT * FROM {P} ORDER BY ("_p0") ASC NULLS LAST LIMIT 3',
    ),
    (
        "(SELECT k FROM a) UNION ALL (SELECT k FROM b WHERE w = 1) LIMIT 1",
        "(SELECT k FROM a) UNION ALL (SELECT k FROM b WHERE w = 1) LIMIT 1",
        f"SELECT * FROM {P} LIMIT 1",
    ),
    (
        "SELECT k, count(*) FROM a GROUP BY k UNION ALL SELECT k, 1 FROM r",
        "SELECT k, count(*) FROM a GROUP BY k UNION ALL SELECT k, 1 FROM r",
        None,
    ),
]


@pytest.mark.parametrize(("sql", "worker", "merge"), CO_PARTITIONED)
def test_co_partitioned(catalog: Catalog, sql: str, worker: str, merge: str | None) -> None:
    assert local(catalog, sql) == (LocalRule.CO_PARTITIONED.value, None, worker, merge)


def test_one_worker_runs_the_whole_query(catalog: Catalog) -> None:
    sql = "WITH x AS (SELECT k FROM h) SELECT count(*) FROM h JOIN h2 ON h.v > h2.v"
    assert joins.plan(sql, catalog) is None  # CTEs are the compound rule's
    sql = "SELECT h.k, count(*) FROM h JOIN h2 ON h.v > h2.v GROUP BY 1 ORDER BY 2 LIMIT 1"
    assert local(catalog, sql) == (LocalRule.ONE_WORKER.value, (0,), sql, None)
    sql = "SELECT * FROM h1 WHERE k IN (SELECT k FROM h1 WHERE v > 2)"
    assert local(catalog, sql) == (LocalRule.ONE_WORKER.value, (1,), sql, None)


REFUSED = [
    "SELECT a.k FROM a JOIN b ON a.v = b.w",  # not on the key
    "SELECT a.k FROM a JOIN b ON a.k + 0 = b.k",  # an expression of the key
    "SELECT a.k FROM a JOIN b ON a.k = b.k OR a.v = b.w",  # not a conjunct
    "SELECT a.k FROM a JOIN f ON a.k = f.d",  # int and float keys route differently
    "SELECT c.k FROM c JOIN a ON c.k = a.k",  # only part of c's key
    "SELECT a.k FROM a JOIN r ON a.k = r.k",  # r is not keyed
    "SELECT a.k FROM a JOIN h ON a.k = h.k",  # h lives on one worker
    "SELECT a.k FROM a, b WHERE a.k = b.k",  # comma join
    "SELECT k FROM a JOIN b USING (k)",
    "SELECT a.k FROM a CROSS JOIN b",
    "SELECT b.k, count(*) FROM a LEFT JOIN b ON a.k = b.k GROUP BY b.k",  # NULL group spans
    "SELECT a.k, count(*) FROM a FULL JOIN b ON a.k = b.k GROUP BY a.k",
    "SELECT a.s, count(*) FROM a JOIN b ON a.k = b.k GROUP BY a.s",
    "SELECT count(*) FROM a JOIN b ON a.k = b.k",
    "SELECT DISTINCT s FROM a",
    "SELECT sum(v) OVER (PARTITION BY s) FROM a",
    "SELECT sum(v) OVER () FROM a",
    "SELECT k FROM a UNION SELECT k FROM b UNION ALL SELECT k FROM a",  # mixed kinds
    "SELECT k FROM a INTERSECT SELECT k FROM b",
    "SELECT a.k FROM a JOIN b ON a.k = b.k ORDER BY a.v + 1 LIMIT 2",  # sort key not output
    "SELECT * FROM a JOIN b ON a.k = b.k ORDER BY w LIMIT 2",  # * with a named sort key
    "SELECT a.k FROM a JOIN (SELECT k FROM b) x ON a.k = x.k",
    "SELECT 1",
    "SELECT * FROM a WHERE k NOT IN (SELECT k FROM b)",  # a NULL in b is seen by one worker
    "SELECT * FROM a WHERE k IN (SELECT k FROM b) OR v > 1",
    "SELECT * FROM a WHERE k IN (SELECT k FROM b WHERE b.s = a.s)",  # correlated
    "SELECT * FROM a WHERE k IN (SELECT w FROM b)",  # not b's key
    "SELECT * FROM a WHERE v IN (SELECT k FROM b)",  # not a's key
    "SELECT * FROM a WHERE k IN (SELECT k FROM r)",  # r is not keyed
    "SELECT * FROM a WHERE k IN (SELECT max(k) FROM b)",
    "SELECT a.k FROM a JOIN b ON a.k = b.k; SELECT 1",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(catalog: Catalog, sql: str) -> None:
    assert joins.plan(sql, catalog) is None


def test_union_of_unkeyed_rows_is_local(catalog: Catalog) -> None:
    """A branch that only filters is local whatever the partitioning (each row lives on one
    worker); UNION's duplicates across workers are removed again by the merge."""
    assert local(catalog, "SELECT k FROM r UNION ALL SELECT k FROM a")[0] == "co-partitioned"
    found = local(catalog, "SELECT k, v FROM r UNION SELECT k, v FROM a")
    assert found[3] == f"SELECT DISTINCT * FROM {P}"


COMPOUND = [
    (
        "WITH x AS (SELECT k, sum(v) AS t FROM a GROUP BY k) SELECT * FROM x WHERE t > 2",
        ["SELECT k, sum(v) AS t FROM a GROUP BY k"],
        "WITH x AS (SELECT * FROM __ldb_q0) SELECT * FROM x WHERE t > 2",
    ),
    (
        "SELECT count(*) FROM (SELECT a.k FROM a JOIN b ON a.k = b.k) AS j",
        ["SELECT a.k FROM a JOIN b ON a.k = b.k"],
        "SELECT count(*) FROM (SELECT * FROM __ldb_q0) AS j",
    ),
    (
        "SELECT k FROM a INTERSECT (SELECT k FROM b) ORDER BY k LIMIT 2",
        ["SELECT k FROM a", "SELECT k FROM b"],
        "SELECT * FROM __ldb_q0 INTERSECT (SELECT * FROM __ldb_q1) ORDER BY k LIMIT 2",
    ),
    (
        "SELECT (SELECT max(v) FROM a) - (SELECT min(w) FROM b) AS spread",
        ["SELECT max(v) FROM a", "SELECT min(w) FROM b"],
        "SELECT (SELECT * FROM __ldb_q0) - (SELECT * FROM __ldb_q1) AS spread",
    ),
]


@pytest.mark.parametrize(("sql", "pieces", "merge"), COMPOUND)
def test_compound(catalog: Catalog, sql: str, pieces: list[str], merge: str) -> None:
    found = compound.plan(sql, catalog)
    assert found is not None
    assert [p.sql for p in found.pieces] == pieces
    assert found.merge_sql == merge


COMPOUND_REFUSED = [
    "SELECT * FROM a WHERE k IN (SELECT k FROM b)",  # the outer query reads a itself
    "SELECT * FROM a",
    "WITH x AS (SELECT k FROM a), y AS (SELECT k FROM x) SELECT * FROM y",  # reads a CTE
    "WITH RECURSIVE x AS (SELECT 1) SELECT * FROM x",
    "WITH x (n) AS (SELECT k FROM a) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", COMPOUND_REFUSED)
def test_compound_refused(catalog: Catalog, sql: str) -> None:
    assert compound.plan(sql, catalog) is None


def test_explain_rows(catalog: Catalog) -> None:
    rows = dict(extended.explain_rows("SELECT a.k FROM a JOIN b ON a.k = b.k LIMIT 2", catalog, 3))
    assert rows == {
        "distributed_plan": "co-partitioned",
        "workers": "0,1,2",
        "worker_sql": "SELECT a.k FROM a JOIN b ON a.k = b.k LIMIT 2",
        "merge": f"SELECT * FROM {P} LIMIT 2",
    }
    sql = "SELECT count(*) FROM (SELECT k FROM a UNION ALL SELECT k FROM h) AS u"
    rows = dict(extended.explain_rows(sql, catalog, 2) or [])
    assert rows["distributed_plan"] == "compound"
    assert rows["__ldb_q0.distributed_plan"] == "co-partitioned"
    assert rows["merge"] == "SELECT count(*) FROM (SELECT * FROM __ldb_q0) AS u"
    assert extended.explain_rows("SELECT a.k FROM a JOIN r ON a.k = r.k", catalog, 2) is None
