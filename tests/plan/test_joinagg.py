"""Golden tests of `joinagg`: an aggregate over a co-partitioned join -> the inner query
(the join's rows, one column per column reference) and the outer query over `__ldb_join`,
and the SQL each worker runs (split's two-phase worker SQL over the inner query).

Answers are checked against one native instance in
`tests/differential/test_planner_joins.py` (JOIN_AGGREGATES) and `test_properties.py`.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import extended, joinagg

pytestmark = pytest.mark.timeout(60)

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64()), ("s", pa.string())])


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """`a`, `b` keyed on k, `r` spread round-robin, `h` a table on worker 0."""
    found = Catalog()
    found.add(Relation("a", "source", SCHEMA, "", partition_by=("k",)))
    found.add(Relation("b", "source", SCHEMA, "", partition_by=("k",)))
    found.add(Relation("r", "source", SCHEMA, ""))
    found.add(Relation("h", "table", SCHEMA, "", home=0))
    return found


PLANNED = [
    (
        "SELECT a.s, count(*), sum(b.v) FROM a JOIN b ON a.k = b.k GROUP BY a.s",
        'SELECT a.s AS "_j0", b.v AS "_j1" FROM a JOIN b ON a.k = b.k',
        'SELECT "_j0", count(*), sum("_j1") FROM __ldb_join GROUP BY "_j0"',
    ),
    (
        "SELECT count(*) FROM a LEFT JOIN b ON a.k = b.k WHERE a.v > 1",
        'SELECT 1 AS "_j0" FROM a LEFT JOIN b ON a.k = b.k WHERE a.v > 1',
        "SELECT count(*) FROM __ldb_join",
    ),
    (
        "SELECT b.s, max(a.v) AS m FROM a FULL JOIN b ON b.k = a.k GROUP BY b.s "
        "HAVING count(*) > 1 ORDER BY m DESC LIMIT 3",
        'SELECT b.s AS "_j0", a.v AS "_j1" FROM a FULL JOIN b ON b.k = a.k',
        'SELECT "_j0", max("_j1") AS m FROM __ldb_join GROUP BY "_j0" '
        "HAVING count(*) > 1 ORDER BY m DESC LIMIT 3",
    ),
]


@pytest.mark.parametrize(("sql", "inner", "outer"), PLANNED)
def test_rewrite(catalog: Catalog, sql: str, inner: str, outer: str) -> None:
    found = joinagg.plan(sql, catalog)
    assert found is not None
    assert (found.inner_sql, found.outer_sql, found.relations) == (inner, outer, ("a", "b"))


def test_worker_sql_runs_the_two_phase_partials_over_the_join(catalog: Catalog) -> None:
    found = joinagg.plan(PLANNED[0][0], catalog)
    assert found is not None
    outer, _, worker_sql = extended.join_aggregate_plan(found, catalog)
    assert outer.merge_sql is not None
    assert worker_sql == (
        'SELECT "_j0" AS "_k0", count(*) AS "_a0", sum("_j1") AS "_a1" FROM '
        '(SELECT a.s AS "_j0", b.v AS "_j1" FROM a JOIN b ON a.k = b.k) AS __ldb_join GROUP BY 1'
    )
    rows = dict(extended.explain_rows(PLANNED[0][0], catalog, 2) or [])
    assert rows["distributed_plan"] == "two-phase over a co-partitioned join"
    assert rows["worker_sql"] == worker_sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a.s, count(*) FROM a JOIN r ON a.k = r.k GROUP BY a.s",  # r is not keyed
        "SELECT a.s, count(*) FROM a JOIN b ON a.v = b.v GROUP BY a.s",  # not on the key
        "SELECT a.s, count(*) FROM a JOIN h ON a.k = h.k GROUP BY a.s",  # a table
        "SELECT a.s, b.v FROM a JOIN b ON a.k = b.k",  # no aggregate
        "SELECT DISTINCT count(*) FROM a JOIN b ON a.k = b.k",
        "SELECT a.s AS v, count(*) FROM a JOIN b ON a.k = b.k GROUP BY v",  # alias or column?
        "SELECT count(*), * FROM a JOIN b ON a.k = b.k",
        "SELECT sum(a.v) OVER (), count(*) FROM a JOIN b ON a.k = b.k",
        "SELECT count(*) FROM a JOIN b ON a.k = b.k WHERE a.v IN (SELECT v FROM r)",
        "SELECT a.s, count(*) FROM a JOIN b ON a.k = b.k GROUP BY ROLLUP (a.s)",
    ],
)
def test_refused(catalog: Catalog, sql: str) -> None:
    assert joinagg.plan(sql, catalog) is None
