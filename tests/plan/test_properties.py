"""Property tests of the distributed planner: cluster == one native instance.

Hypothesis draws small data for a keyed and an unkeyed source (ints, floats, strings and
NULLs) and queries from a grammar of the shapes the planner splits (filters, GROUP BY the
key and other columns, the two-phase aggregates, ORDER BY ... LIMIT, DISTINCT, joins, UNION
[ALL], keyed windows, sub-queries, [NOT] IN semi-joins); each answer must equal the single instance's
(`harness.compare_outcomes`: order-insensitive unless the query sorts, float tolerance,
column types). One 2-worker cluster serves the whole module: each example creates its two
sources under fresh names on both sides and drops them afterwards.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laminardb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))
from harness import compare_outcomes, open_single, run_query

pytestmark = pytest.mark.timeout(300)

COLUMNS = "k BIGINT, g VARCHAR, x DOUBLE, n BIGINT"
_names = itertools.count()

ints = st.one_of(st.none(), st.integers(-3, 6))
keys = st.one_of(st.none(), st.integers(0, 7))
strings = st.sampled_from([None, "a", "b", "c", "B"])
floats = st.sampled_from([None, 0.5, -1.25, 2.0, 10.0, -0.0])
rows = st.lists(st.tuples(keys, strings, floats, ints), max_size=14)


def _table(data: list[tuple[Any, ...]]) -> pa.Table:
    k, g, x, n = (list(c) for c in zip(*data, strict=True)) if data else ([], [], [], [])
    return pa.table(
        {
            "k": pa.array(k, pa.int64()),
            "g": pa.array(g, pa.string()),
            "x": pa.array(x, pa.float64()),
            "n": pa.array(n, pa.int64()),
        }
    )


# ---------------------------------------------------------------------------- the grammar

PREDICATES = ["n > 0", "g IS NOT NULL", "x < 2.5", "k IN (1, 2, 5)", "n IS NULL OR n < 3"]
JOIN_AGGREGATES = ["count(*)", "count(q.n)", "sum(p.n)", "min(q.x)", "max(p.g)", "avg(q.n)"]
AGGREGATES = ["count(*)", "count(n)", "sum(n)", "min(x)", "max(g)", "avg(n)", "sum(x)"]
AGGREGATES += ["percentile_cont(x, 0.3)", "percentile_cont(n, 0.75)"]


@st.composite
def where(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["", *(f" WHERE {p}" for p in PREDICATES)]))


@st.composite
def single_relation(draw: st.DrawFn) -> tuple[str, bool]:
    """A query over one relation `{R}` and whether its top level sorts."""
    shape = draw(st.sampled_from(["filter", "group", "global", "topn", "distinct", "window"]))
    w = draw(where())
    aggs = ", ".join(draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3)))
    if shape == "filter":
        cols = ", ".join(draw(st.permutations(["k", "g", "x", "n"]))[: draw(st.integers(1, 4))])
        return f"SELECT {cols} FROM {{R}}{w}", False
    if shape == "group":
        key = draw(st.sampled_from(["k", "g", "n", "k, g"]))
        having = draw(st.sampled_from(["", " HAVING count(*) > 1"]))
        return f"SELECT {key}, {aggs} FROM {{R}}{w} GROUP BY {key}{having}", False
    if shape == "global":
        return f"SELECT {aggs} FROM {{R}}{w}", False
    if shape == "topn":
        a, b = draw(st.permutations(["k", "g", "n"]))[:2]
        da, db = draw(st.sampled_from(["", " DESC"])), draw(st.sampled_from(["", " DESC"]))
        limit = draw(st.integers(1, 5))
        offset = draw(st.sampled_from(["", " OFFSET 1"]))
        return (
            f"SELECT {a}, {b} FROM {{R}}{w} ORDER BY {a}{da}, {b}{db} LIMIT {limit}{offset}",
            True,
        )
    if shape == "distinct":
        cols = draw(st.sampled_from(["k", "g", "k, g", "g, n"]))
        return f"SELECT DISTINCT {cols} FROM {{R}}{w}", False
    fn = draw(st.sampled_from(["count(*)", "sum(n)", "rank() OVER", "min(g)"]))
    over = (
        "rank() OVER (PARTITION BY k ORDER BY n)"
        if fn == "rank() OVER"
        else f"{fn} OVER (PARTITION BY k)"
    )
    return f"SELECT k, n, {over} AS w FROM {{R}}{w}", False


@st.composite
def query(draw: st.DrawFn) -> tuple[str, bool]:
    """A query over `{K}` (keyed) and `{U}` (unkeyed), and whether its top level sorts."""
    shape = draw(
        st.sampled_from(["single", "join", "join_group", "join_agg", "union", "sub", "semi"])
    )
    if shape == "semi":
        inner = draw(st.sampled_from(["{K}", "{U}"]))
        pred = draw(st.sampled_from(PREDICATES))
        op = draw(st.sampled_from(["IN", "NOT IN"]))
        return _semi(draw(where()), op, inner, pred), False
    if shape == "single":
        sql, ordered = draw(single_relation())
        return sql.replace("{R}", draw(st.sampled_from(["{K}", "{U}"]))), ordered
    if shape == "join_agg":  # two-phase over a join not grouped by the key (joinagg)
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]))
        other = draw(st.sampled_from(["{K}", "{U}"]))
        aggs = draw(st.lists(st.sampled_from(JOIN_AGGREGATES), min_size=1, max_size=3))
        group = draw(st.sampled_from(["", "p.g", "q.g", "q.n % 2"]))
        having = draw(st.sampled_from(["", " HAVING count(*) > 1"])) if group else ""
        sql = f"SELECT {', '.join(([group] if group else []) + aggs)} FROM {{K}} AS p {kind} "
        sql += f"{other} AS q ON p.k = q.k"
        sql += draw(st.sampled_from(["", " WHERE p.n > 0", " WHERE q.g IS NOT NULL"]))
        return sql + (f" GROUP BY {group}{having}" if group else ""), False
    if shape in ("join", "join_group"):
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]))
        other = draw(st.sampled_from(["{K}", "{U}"]))
        extra = draw(st.sampled_from(["", " AND p.n < q.n", " AND p.g = q.g"]))
        on = f"p.k = q.k{extra}"
        if shape == "join":
            return f"SELECT p.k, p.g, q.n, q.x FROM {{K}} AS p {kind} {other} AS q ON {on}", False
        side = draw(st.sampled_from(["p", "q"]))
        return (
            f"SELECT {side}.k, count(*), sum(q.n), max(p.g) FROM {{K}} AS p {kind} {other} AS q "
            f"ON {on} GROUP BY {side}.k",
            False,
        )
    if shape == "union":
        op = draw(st.sampled_from(["UNION ALL", "UNION"]))
        left, right = draw(where()), draw(where())
        first, second = draw(st.permutations(["{K}", "{U}"]))
        sql = f"SELECT k, g FROM {first}{left} {op} SELECT k, g FROM {second}{right}"
        if draw(st.booleans()):
            return sql + f" ORDER BY k, g LIMIT {draw(st.integers(1, 6))}", True
        return sql, False
    inner, _ = draw(single_relation())
    inner = inner.replace("{R}", draw(st.sampled_from(["{K}", "{U}"])))
    if " ORDER BY " in inner:
        return f"SELECT count(*) FROM ({inner}) AS q", False
    outer = draw(st.sampled_from(["SELECT count(*) FROM q", "SELECT * FROM q"]))
    return f"WITH q AS ({inner}) {outer}", False


def _semi(where_clause: str, op: str, inner: str, pred: str) -> str:
    """`SELECT ... FROM {K} WHERE [filter AND] k [NOT] IN (SELECT k FROM inner WHERE pred)`."""
    semi = f"k {op} (SELECT k FROM {inner} WHERE {pred})"
    condition = f"{where_clause[len(' WHERE ') :]} AND {semi}" if where_clause else semi
    return f"SELECT k, g, n FROM {{K}} WHERE {condition}"


# ---------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, Any]]:
    """(single native instance, 2-worker cluster) for the whole module."""
    single = open_single()
    cluster = laminardb.open(":memory:", workers=2, split_rows=1)
    try:
        yield single, cluster
    finally:
        cluster.close()
        single.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(keyed=rows, unkeyed=rows, queries=st.lists(query(), min_size=1, max_size=4))
def test_cluster_answers_like_one_instance(
    pair: tuple[Any, Any],
    keyed: list[tuple[Any, ...]],
    unkeyed: list[tuple[Any, ...]],
    queries: list[tuple[str, bool]],
) -> None:
    single, cluster = pair
    n = next(_names)
    names = {"K": f"pk{n}", "U": f"pu{n}"}
    for conn, key in ((single, ""), (cluster, " PARTITION BY (k)")):
        conn.execute(f"CREATE SOURCE {names['K']} ({COLUMNS}){key}")
        conn.execute(f"CREATE SOURCE {names['U']} ({COLUMNS})")
        for name, data in ((names["K"], keyed), (names["U"], unkeyed)):
            if data:
                conn.insert(name, _table(data))
    try:
        for template, ordered in queries:
            sql = template.format(**names)
            expected, actual = run_query(single, sql), run_query(cluster, sql)
            diff = compare_outcomes(expected, actual, ordered)
            assert diff is None, f"{sql}\nkeyed={keyed}\nunkeyed={unkeyed}\n{diff}"
    finally:
        for conn in (single, cluster):
            conn.execute(f"DROP SOURCE {names['K']}")
            conn.execute(f"DROP SOURCE {names['U']}")
