"""Golden tests of the planner's rewrite rules: input SQL -> worker SQL, partials, merge SQL.

Pure planning (no engine, no cluster): each case pins the exact SQL every worker runs and
the merge the coordinator runs, so a change in a rewrite shows up as a readable diff. That
the rewrites give the single instance's answers is checked by the differential oracle
(`tests/differential/test_planner_oracle.py`); a few cases here also run the generated SQL
on one native engine to check it is accepted as written.
"""

from __future__ import annotations

import laminardb_native as native
import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan.split import PARTIALS, Plan, Rule, plan

pytestmark = pytest.mark.timeout(60)

SCHEMA = pa.schema([("k", pa.int32()), ("v", pa.int64()), ("d", pa.float64()), ("s", pa.string())])


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """`t` keyed on k, `r` spread round-robin, `h` a table on worker 1, `c` keyed on (k, s)."""
    found = Catalog()
    found.add(Relation("t", "source", SCHEMA, "", partition_by=("k",)))
    found.add(Relation("r", "source", SCHEMA, ""))
    found.add(Relation("h", "table", SCHEMA, "", home=1))
    found.add(Relation("c", "source", SCHEMA, "", partition_by=("k", "s")))
    return found


def golden(catalog: Catalog, sql: str) -> tuple[str, str, tuple[str, ...], str | None]:
    found = plan(sql, catalog)
    assert found is not None, sql
    return found.rule.value, found.worker_sql, found.partial_columns, found.merge_sql


P = PARTIALS

PUSHDOWN = [
    (
        "SELECT k, v FROM r WHERE v > 1",
        "SELECT k, v FROM r WHERE v > 1",
        ("_p0", "_p1"),
        None,
    ),
    (
        "SELECT * FROM r ORDER BY v DESC LIMIT 3 OFFSET 2",
        'SELECT "k", "v", "d", "s" FROM r ORDER BY v DESC LIMIT 5',
        ("_p0", "_p1", "_p2", "_p3"),
        f'SELECT "_p0", "_p1", "_p2", "_p3" FROM {P} ORDER BY ("_p1") DESC NULLS FIRST '
        "LIMIT 3 OFFSET 2",
    ),
    (
        "SELECT k AS x FROM r ORDER BY x, d + 1 NULLS FIRST LIMIT 3",
        'SELECT k AS x, d + 1 AS "__ldb_h0" FROM r ORDER BY x, d + 1 NULLS FIRST LIMIT 3',
        ("_p0", "_h0"),
        f'SELECT "_p0" FROM {P} ORDER BY ("_p0") ASC NULLS LAST, ("_h0") ASC NULLS FIRST LIMIT 3',
    ),
    (
        "SELECT upper(s) FROM r LIMIT 4",
        "SELECT upper(s) FROM r LIMIT 4",
        ("_p0",),
        f'SELECT "_p0" FROM {P} LIMIT 4',
    ),
    (
        "SELECT s FROM r ORDER BY k + v",
        'SELECT s, k + v AS "__ldb_h0" FROM r',
        ("_p0", "_h0"),
        f'SELECT "_p0" FROM {P} ORDER BY ("_h0") ASC NULLS LAST',
    ),
    (
        "SELECT ALL k FROM t WHERE s IS DISTINCT FROM 'a' ORDER BY 1 DESC LIMIT 2",
        "SELECT k FROM t WHERE s IS DISTINCT FROM 'a' ORDER BY 1 DESC LIMIT 2",
        ("_p0",),
        f'SELECT "_p0" FROM {P} ORDER BY ("_p0") DESC NULLS FIRST LIMIT 2',
    ),
    (
        "select k ^ 2, round(d, 1) -- keep the user's text\nfrom r where v between 1 and 2",
        "SELECT k ^ 2, round(d, 1) from r where v between 1 and 2",
        ("_p0", "_p1"),
        None,
    ),
]


@pytest.mark.parametrize(("sql", "worker", "columns", "merge"), PUSHDOWN)
def test_pushdown(
    catalog: Catalog, sql: str, worker: str, columns: tuple[str, ...], merge: str | None
) -> None:
    assert golden(catalog, sql) == ("pushdown", worker, columns, merge)


KEYED = [
    (
        "SELECT k, count(*) FROM t GROUP BY k",
        "SELECT k, count(*) FROM t GROUP BY k",
        ("_p0", "_p1"),
        None,
    ),
    (
        "SELECT k, count(DISTINCT v) AS n FROM t GROUP BY 1 HAVING n > 1 ORDER BY 2 DESC LIMIT 3",
        "SELECT k, count(DISTINCT v) AS n FROM t GROUP BY 1 HAVING n > 1 ORDER BY 2 DESC LIMIT 3",
        ("_p0", "_p1"),
        f'SELECT "_p0", "_p1" FROM {P} ORDER BY ("_p1") DESC NULLS FIRST LIMIT 3',
    ),
    (
        "SELECT s FROM t GROUP BY s, t.k ORDER BY median(v) LIMIT 1",
        'SELECT s, median(v) AS "__ldb_h0" FROM t GROUP BY s, t.k ORDER BY median(v) LIMIT 1',
        ("_p0", "_h0"),
        f'SELECT "_p0" FROM {P} ORDER BY ("_h0") ASC NULLS LAST LIMIT 1',
    ),
    (
        "SELECT s, k, sum(v) FROM c GROUP BY s, k",
        "SELECT s, k, sum(v) FROM c GROUP BY s, k",
        ("_p0", "_p1", "_p2"),
        None,
    ),
]


@pytest.mark.parametrize(("sql", "worker", "columns", "merge"), KEYED)
def test_keyed_group(
    catalog: Catalog, sql: str, worker: str, columns: tuple[str, ...], merge: str | None
) -> None:
    assert golden(catalog, sql) == ("keyed-group", worker, columns, merge)


TWO_PHASE = [
    (
        "SELECT count(*) FROM r",
        'SELECT count(*) AS "_a0" FROM r',
        ("_a0",),
        f'SELECT COALESCE(SUM("_a0"), 0) AS "_o0" FROM {P}',
    ),
    (
        "SELECT count(v), sum(v), min(s), max(d), avg(v) FROM r WHERE k > 0",
        'SELECT count(v) AS "_a0", sum(v) AS "_a1", min(s) AS "_a2", max(d) AS "_a3", '
        'avg(v) AS "_a4" FROM r WHERE k > 0',
        ("_a0", "_a1", "_a2", "_a3", "_a4"),
        'SELECT COALESCE(SUM("_a0"), 0) AS "_o0", SUM("_a1") AS "_o1", MIN("_a2") AS "_o2", '
        'MAX("_a3") AS "_o3", (SUM("_a4" * CAST("_a0" AS DOUBLE)) / CAST(SUM("_a0") AS DOUBLE))'
        f' AS "_o4" FROM {P}',
    ),
    (
        "SELECT s, count(*) AS c, sum(v) / count(*) FROM t GROUP BY s HAVING c > 1 "
        "ORDER BY c DESC, s LIMIT 5",
        'SELECT s AS "_k0", count(*) AS "_a0", sum(v) AS "_a1" FROM t GROUP BY 1',
        ("_k0", "_a0", "_a1"),
        'SELECT "_k0" AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1", '
        'SUM("_a1") / COALESCE(SUM("_a0"), 0) AS "_o2" '
        f'FROM {P} GROUP BY "_k0" HAVING (COALESCE(SUM("_a0"), 0)) > 1 '
        'ORDER BY ("_o1") DESC NULLS FIRST, ("_o0") ASC NULLS LAST LIMIT 5',
    ),
    (
        "SELECT r.k + 1, arrow_typeof(avg(d)), max(v) - min(v) FROM r GROUP BY k "
        "ORDER BY count(*) LIMIT 2",
        'SELECT k AS "_k0", count(d) AS "_a0", sum(d) AS "_a1", max(v) AS "_a2", '
        'min(v) AS "_a3", count(*) AS "_a4" FROM r GROUP BY 1',
        ("_k0", "_a0", "_a1", "_a2", "_a3", "_a4"),
        'SELECT "_k0" + 1 AS "_o0", arrow_typeof((SUM("_a1") / CAST(SUM("_a0") AS DOUBLE))) '
        'AS "_o1", MAX("_a2") - MIN("_a3") AS "_o2" '
        f'FROM {P} GROUP BY "_k0" ORDER BY (COALESCE(SUM("_a4"), 0)) ASC NULLS LAST LIMIT 2',
    ),
    (
        "SELECT upper(s) AS u, count(*) FROM r GROUP BY u",
        'SELECT upper(s) AS "_k0", count(*) AS "_a0" FROM r GROUP BY 1',
        ("_k0", "_a0"),
        f'SELECT "_k0" AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1" FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT lower(upper(s)), COUNT(*), count(*) FROM r GROUP BY upper(s)",
        'SELECT upper(s) AS "_k0", COUNT(*) AS "_a0" FROM r GROUP BY 1',
        ("_k0", "_a0"),
        'SELECT lower("_k0") AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1", '
        f'COALESCE(SUM("_a0"), 0) AS "_o2" FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT s, min(v) FROM t GROUP BY s",
        'SELECT s AS "_k0", min(v) AS "_a0" FROM t GROUP BY 1',
        ("_k0", "_a0"),
        f'SELECT "_k0" AS "_o0", MIN("_a0") AS "_o1" FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT k, count(*) FROM c GROUP BY k",
        'SELECT k AS "_k0", count(*) AS "_a0" FROM c GROUP BY 1',
        ("_k0", "_a0"),
        f'SELECT "_k0" AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1" FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT k, count(*) FROM h GROUP BY k",
        'SELECT k AS "_k0", count(*) AS "_a0" FROM h GROUP BY 1',
        ("_k0", "_a0"),
        f'SELECT "_k0" AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1" FROM {P} GROUP BY "_k0"',
    ),
]


@pytest.mark.parametrize(("sql", "worker", "columns", "merge"), TWO_PHASE)
def test_two_phase(
    catalog: Catalog, sql: str, worker: str, columns: tuple[str, ...], merge: str | None
) -> None:
    assert golden(catalog, sql) == ("two-phase", worker, columns, merge)


def test_a_table_is_read_on_its_home_worker_only(catalog: Catalog) -> None:
    found = plan("SELECT k FROM h", catalog)
    assert found is not None and found.shards == (1,)
    spread = plan("SELECT k FROM r", catalog)
    assert spread is not None and spread.shards is None


NOT_SPLIT = [
    "SELECT 1",
    "SELECT * FROM nope",
    "SELECT * FROM T",
    "SELECT * FROM public.r",
    "SELECT DISTINCT ON (k) k FROM r",
    "SELECT DISTINCT k, count(*) FROM r GROUP BY k",
    "SELECT DISTINCT k FROM r ORDER BY v LIMIT 2",
    "SELECT count(DISTINCT v), count(DISTINCT d) FROM r",
    "SELECT median(v), median(d) FROM r",
    "SELECT percentile_cont(v, 0.5), median(d) FROM r",
    "SELECT percentile_cont(v, 1.5) FROM r",
    "SELECT percentile_cont(v, k) FROM r",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v, d) FROM r",
    "SELECT approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM r",
    "SELECT k, string_agg(s, ',') FROM r GROUP BY k",
    "SELECT avg(v) FILTER (WHERE k > 1) FROM r",
    "SELECT count(DISTINCT v) FILTER (WHERE k > 1) FROM r",
    "SELECT r.k FROM r JOIN t ON r.k = t.k",
    "SELECT * FROM (SELECT k FROM r) q",
    "WITH q AS (SELECT k FROM r) SELECT * FROM q",
    "SELECT k FROM r UNION ALL SELECT k FROM t",
    "SELECT k, sum(v) OVER (PARTITION BY k) FROM r",
    "SELECT k FROM r WHERE v IN (SELECT v FROM t)",
    "SELECT k, v, count(*) FROM r GROUP BY k",
    "SELECT k, count(*) FROM r GROUP BY ROLLUP (k)",
    "SELECT k, count(*) FROM t GROUP BY CUBE (k, s)",
    "SELECT * FROM r GROUP BY k, v, d, s",
    "SELECT `k` FROM r",
    "SELECT v AS k, count(*) FROM r GROUP BY k",
    "SELECT v AS k FROM r ORDER BY k + 1 LIMIT 2",
    "SELECT k FROM r LIMIT 1 + 1",
    "SELECT k, approx_median(v) FROM r GROUP BY k",
    "SELECT k, count(*) FROM r GROUP BY k QUALIFY count(*) > 1",
]


@pytest.mark.parametrize("sql", NOT_SPLIT)
def test_what_no_rule_splits(catalog: Catalog, sql: str) -> None:
    assert plan(sql, catalog) is None


def test_the_generated_sql_is_accepted_as_written(catalog: Catalog) -> None:
    """Worker SQL over the relation and merge SQL over partials of the worker's types run on
    a native engine (the probe `distributed` does, here over every golden case)."""
    engine = native.open(":memory:")
    try:
        for name in ("t", "r", "h", "c"):
            engine.execute(f"CREATE SOURCE {name} (k INT, v BIGINT, d DOUBLE, s VARCHAR)")
        for sql, *_ in PUSHDOWN + KEYED + TWO_PHASE:
            found = plan(sql, catalog)
            assert isinstance(found, Plan)
            partial = engine.sql(found.worker_sql).to_arrow().schema
            assert len(partial) == len(found.partial_columns), sql
            if found.merge_sql is None:
                continue
            engine.execute(f"DROP SOURCE IF EXISTS {PARTIALS}")
            engine.create_table(
                PARTIALS, pa.schema(zip(found.partial_columns, partial.types, strict=True))
            )
            engine.sql(found.merge_sql).to_arrow()
    finally:
        engine.close()


def test_rules_are_tried_key_first(catalog: Catalog) -> None:
    keyed = plan("SELECT k, count(*) FROM t GROUP BY k", catalog)
    spread = plan("SELECT k, count(*) FROM r GROUP BY k", catalog)
    assert keyed is not None and keyed.rule is Rule.KEYED_GROUP
    assert spread is not None and spread.rule is Rule.TWO_PHASE
