"""Golden tests of the aggregate, DISTINCT, top-N and routing rewrites (input SQL -> worker
SQL, partial columns, merge SQL, routed shards, in-process merge), and unit tests of the
in-process merge (`fastmerge`) against the SQL merge on one native engine.

Pure planning plus one native engine; that the plans give the single instance's answers on
a cluster is checked by `tests/differential/test_planner_oracle.py`.
"""

from __future__ import annotations

import laminardb_native as native
import numpy as np
import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.ingest import partition
from laminardb.plan import fastmerge, routing
from laminardb.plan.fastmerge import SortKey, Spec
from laminardb.plan.split import PARTIALS, Plan, plan

pytestmark = pytest.mark.timeout(60)

SCHEMA = pa.schema(
    [
        ("k", pa.int32()),
        ("v", pa.int64()),
        ("d", pa.float64()),
        ("s", pa.string()),
        ("b", pa.bool_()),
    ]
)
P = PARTIALS


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """`t` keyed on k, `r` spread round-robin, `c` keyed on (k, s), `h` a table on worker 1."""
    found = Catalog()
    found.add(Relation("t", "source", SCHEMA, "", partition_by=("k",)))
    found.add(Relation("r", "source", SCHEMA, ""))
    found.add(Relation("c", "source", SCHEMA, "", partition_by=("k", "s")))
    found.add(Relation("h", "table", SCHEMA, "", home=1))
    return found


def golden(catalog: Catalog, sql: str) -> tuple[str, str, tuple[str, ...], str | None]:
    found = plan(sql, catalog)
    assert found is not None, sql
    return found.rule.value, found.worker_sql, found.partial_columns, found.merge_sql


CASES = [
    (
        "SELECT s, bool_and(b), bool_or(b) FROM r GROUP BY s",
        'SELECT s AS "_k0", bool_and(b) AS "_a0", bool_or(b) AS "_a1" FROM r GROUP BY 1',
        ("_k0", "_a0", "_a1"),
        'SELECT "_k0" AS "_o0", BOOL_AND("_a0") AS "_o1", BOOL_OR("_a1") AS "_o2" '
        f'FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT s, count(DISTINCT v) AS n, count(*), approx_distinct(v) FROM r GROUP BY s",
        'SELECT s AS "_k0", v AS "_d0", count(*) AS "_a0" FROM r GROUP BY 1, 2',
        ("_k0", "_d0", "_a0"),
        'SELECT "_k0" AS "_o0", COUNT(DISTINCT "_d0") AS "_o1", COALESCE(SUM("_a0"), 0) AS "_o2", '
        f'APPROX_DISTINCT("_d0") AS "_o3" FROM {P} GROUP BY "_k0"',
    ),
    (
        "SELECT count(DISTINCT v + 1), sum(v) FROM r WHERE k > 0",
        'SELECT v + 1 AS "_d0", sum(v) AS "_a0" FROM r WHERE k > 0 GROUP BY 1',
        ("_d0", "_a0"),
        f'SELECT COUNT(DISTINCT "_d0") AS "_o0", SUM("_a0") AS "_o1" FROM {P}',
    ),
    (
        "SELECT sum(v) FILTER (WHERE k > 1), count(*) FILTER (WHERE b) FROM r",
        'SELECT sum(v) FILTER (WHERE k > 1) AS "_a0", count(*) FILTER (WHERE b) AS "_a1" FROM r',
        ("_a0", "_a1"),
        f'SELECT SUM("_a0") AS "_o0", COALESCE(SUM("_a1"), 0) AS "_o1" FROM {P}',
    ),
    (  # ungrouped, but the workers group by the distinct argument: native's ungrouped FILTER
        "SELECT count(DISTINCT s), count(*) FILTER (WHERE k % 2 = 0) FROM r",
        'SELECT s AS "_d0", count(*) FILTER (WHERE (k % 2 = 0) IS TRUE) AS "_a0" FROM r GROUP BY 1',
        ("_d0", "_a0"),
        f'SELECT COUNT(DISTINCT "_d0") AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1" FROM {P}',
    ),
    (
        "SELECT s, var_samp(v), stddev_pop(v), count(v) FROM r GROUP BY s",
        'SELECT s AS "_k0", count(v) AS "_a0", avg(v) AS "_a1", var_pop(v) AS "_a2" '
        "FROM r GROUP BY 1",
        ("_k0", "_a0", "_a1", "_a2"),
        None,
    ),
    (
        "SELECT s, median(v), count(DISTINCT v), min(d) FROM r GROUP BY s",
        'SELECT s AS "_k0", v AS "_d0", count(*) AS "_a0", min(d) AS "_a1" FROM r GROUP BY 1, 2',
        ("_k0", "_d0", "_a0", "_a1"),
        None,
    ),
    (
        "SELECT s, percentile_cont(d, 0.25) AS p, count(*) FROM r GROUP BY s",
        'SELECT s AS "_k0", d AS "_d0", count(*) AS "_a0", count(*) AS "_a1" FROM r GROUP BY 1, 2',
        ("_k0", "_d0", "_a0", "_a1"),
        None,
    ),
    (
        "SELECT percentile_cont(abs(v - 3), 0.5) FROM r",
        'SELECT abs(v - 3) AS "_d0", count(*) AS "_a0" FROM r GROUP BY 1',
        ("_d0", "_a0"),
        None,
    ),
    (
        "SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY v DESC) FROM r WHERE k > 0",
        'SELECT v AS "_d0", count(*) AS "_a0" FROM r WHERE k > 0 GROUP BY 1',
        ("_d0", "_a0"),
        None,
    ),
    (
        "SELECT DISTINCT s, b FROM r WHERE v > 0",
        "SELECT DISTINCT s, b FROM r WHERE v > 0",
        ("_p0", "_p1"),
        f'SELECT DISTINCT "_p0", "_p1" FROM {P}',
    ),
    (
        "SELECT DISTINCT s FROM r ORDER BY s DESC LIMIT 3 OFFSET 1",
        "SELECT DISTINCT s FROM r ORDER BY s DESC LIMIT 4",
        ("_p0",),
        f'SELECT DISTINCT "_p0" FROM {P} ORDER BY ("_p0") DESC NULLS FIRST LIMIT 3 OFFSET 1',
    ),
]


@pytest.mark.parametrize(("sql", "worker", "columns", "merge"), CASES)
def test_rewrites(
    catalog: Catalog, sql: str, worker: str, columns: tuple[str, ...], merge: str | None
) -> None:
    assert golden(catalog, sql)[1:] == (worker, columns, merge)


def test_in_process_merges_are_attached_to_simple_merges_only(catalog: Catalog) -> None:
    top = plan("SELECT s, sum(v) AS x FROM r GROUP BY s ORDER BY x DESC LIMIT 10", catalog)
    assert top is not None and top.fast == Spec(
        True, ("_k0",), (("key", "_k0"), ("sum", "_a0")), (SortKey("_o1", True, True),), 10, None
    )
    by_call = plan("SELECT s, count(*) FROM r GROUP BY s ORDER BY count(*) LIMIT 2", catalog)
    assert by_call is not None and by_call.fast is not None
    assert by_call.fast.order == (SortKey("_o1", False, False),)
    rows = plan("SELECT k, v FROM r ORDER BY d LIMIT 2", catalog)
    assert rows is not None and rows.fast == Spec(
        False, (), (("col", "_p0"), ("col", "_p1")), (SortKey("_h0", False, False),), 2, None
    )
    moments = plan("SELECT var_samp(d), count(d) FROM r", catalog)
    assert (
        moments is not None
        and moments.merge_sql is None
        and moments.fast
        == Spec(True, (), (("var_samp", "_a0", "_a1", "_a2"), ("count", "_a0")), (), None, None)
    )
    for sql in ("SELECT stddev(d) * 2 FROM r", "SELECT s FROM r GROUP BY s HAVING var_pop(v) > 1"):
        found = plan(sql, catalog)  # two-stage merge (`moments`), never in process only
        assert found is not None and found.fast is None and found.staged is not None, sql
    for sql in (
        "SELECT s, sum(v) + 1 FROM r GROUP BY s",
        "SELECT s, avg(v) FROM r GROUP BY s",
        "SELECT s, count(*) FROM r GROUP BY s HAVING count(*) > 1",
        "SELECT s, approx_distinct(v) FROM r GROUP BY s",
        "SELECT k, v FROM r",
    ):
        found = plan(sql, catalog)
        assert found is not None and found.fast is None, sql


def _vshard(table: pa.Table, keys: list[str]) -> list[int]:
    return sorted({int(v) for v in partition.vshards(table, keys)})


def test_key_equality_and_in_lists_route_to_their_shards(catalog: Catalog) -> None:
    one = plan("SELECT * FROM t WHERE k = 5", catalog)
    assert one is not None and one.vshards == tuple(
        _vshard(pa.table({"k": pa.array([5], pa.int32())}), ["k"])
    )
    several = plan(
        "SELECT s, count(*) FROM t WHERE v > 1 AND (k IN (1, -2, 1)) GROUP BY s", catalog
    )
    assert several is not None and several.vshards == tuple(
        _vshard(pa.table({"k": pa.array([1, -2], pa.int32())}), ["k"])
    )
    both = plan("SELECT v FROM c WHERE 'x' = s AND k = 3", catalog)
    expected = _vshard(pa.table({"k": pa.array([3], pa.int32()), "s": ["x"]}), ["k", "s"])
    assert both is not None and both.vshards == tuple(expected)
    for sql in (
        "SELECT * FROM t WHERE k = 5 OR v = 1",
        "SELECT * FROM t WHERE k > 5",
        "SELECT * FROM t WHERE k = 5.0",
        "SELECT * FROM t WHERE k = 99999999999",
        "SELECT * FROM t WHERE k IN (SELECT k FROM r)",
        "SELECT * FROM c WHERE k = 3",
        "SELECT * FROM r WHERE k = 3",
        "SELECT * FROM h WHERE k = 3",
    ):
        found = plan(sql, catalog)
        assert found is None or found.vshards is None, sql
    assert routing.workers_of((0, 1, 2, 5), 3) == [0, 1, 2]
    assert routing.workers_of((4, 7), 3) == [1]


def _sql_merge(merge: str, partials: pa.Table) -> pa.Table:
    engine = native.open(":memory:")
    try:
        engine.create_table(PARTIALS, partials.schema)
        if partials.num_rows:
            engine.insert(PARTIALS, partials)
        result: pa.Table = engine.sql(merge).to_arrow()
        return result
    finally:
        engine.close()


POOL = {
    "key": pa.array(["a", None, "b", "a", None, "c"], pa.string()),
    "count": pa.array([1, 2, 0, 4, 5, 0], pa.int64()),
    "sum": pa.array([2**62, None, None, 2**62, 7, None], pa.int64()),
    "bool_and": pa.array([True, None, None, False, True, None], pa.bool_()),
    "bool_or": pa.array([False, None, None, False, True, None], pa.bool_()),
    "min": pa.array([1.5, None, 2.5, -1.0, 0.0, None], pa.float64()),
    "max": pa.array([1.5, None, 2.5, -1.0, 0.0, None], pa.float64()),
}
"""Partial values of each kind: NULL groups, wrapping sums, all-NULL groups."""


@pytest.mark.parametrize("rows", [6, 0], ids=["rows", "empty"])
def test_fast_merge_equals_the_sql_merge(catalog: Catalog, rows: int) -> None:
    """Counts, wrapping sums, booleans, NULL groups, NULL placement and top-N cuts."""
    for sql in (
        "SELECT s, count(*), sum(v), bool_and(b), bool_or(b), min(d), max(d) FROM r GROUP BY s",
        "SELECT count(*), sum(v), bool_and(b), max(d) FROM r",
        "SELECT s, max(d) AS m FROM r GROUP BY s ORDER BY m DESC NULLS LAST, s LIMIT 2",
        "SELECT s, sum(v) FROM r GROUP BY s ORDER BY 2 NULLS FIRST, 1 DESC LIMIT 3 OFFSET 1",
    ):
        found = plan(sql, catalog)
        assert isinstance(found, Plan) and found.fast is not None and found.merge_sql
        kinds = {col: kind for kind, col in found.fast.outputs}
        partials = pa.table(
            {c: POOL[kinds.get(c, "key")].slice(0, rows) for c in found.partial_columns}
        )
        mine = fastmerge.run(found.fast, partials)
        theirs = _sql_merge(found.merge_sql, partials)
        assert mine is not None
        assert mine.schema.types == theirs.schema.types, sql
        left, right = mine.to_pylist(), theirs.to_pylist()
        if "ORDER BY" not in sql:
            left, right = sorted(left, key=str), sorted(right, key=str)
        assert left == right, sql


def test_fast_merge_declines_what_pyarrow_could_answer_differently() -> None:
    floats = pa.table({"_k0": pa.array([float("nan"), 1.0]), "_a0": pa.array([1, 2])})
    grouped = Spec(True, ("_k0",), (("key", "_k0"), ("count", "_a0")), (), None, None)
    assert fastmerge.run(grouped, floats) is None
    rows = Spec(False, (), (("col", "_k0"),), (SortKey("_k0", False, False),), 1, None)
    assert fastmerge.run(rows, floats) is None
    nan = pa.table({"_a0": pa.array([float("nan"), 1.0])})
    for kind in ("min", "max"):
        assert fastmerge.run(Spec(True, (), ((kind, "_a0"),), (), None, None), nan) is None
    plain = pa.table({"_k0": pa.array([2.0, None, 1.0])})
    found = fastmerge.run(rows, plain)
    assert found is not None and found.to_pylist() == [{"_o0": 1.0}]


def test_moments_merge_stably() -> None:
    """VAR/STDDEV from per-worker (count, mean, var_pop): equal to numpy over all values,
    also for values far from zero with a small spread (no cancellation), NULL for too few."""
    workers = [np.array([1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.4]), np.array([1e9 + 0.3]), np.array([])]
    partials = pa.table(
        {
            "_k0": pa.array(["a", "a", "a"]),
            "_a0": pa.array([len(w) for w in workers], pa.int64()),
            "_a1": pa.array([w.mean() if len(w) else None for w in workers], pa.float64()),
            "_a2": pa.array([w.var() if len(w) else None for w in workers], pa.float64()),
        }
    )
    names = ("_a0", "_a1", "_a2")
    spec = Spec(
        True,
        ("_k0",),
        (
            ("var_samp", *names),
            ("var_pop", *names),
            ("stddev_samp", *names),
            ("stddev_pop", *names),
        ),
        (),
        None,
        None,
    )
    found = fastmerge.run(spec, partials)
    assert found is not None
    values = np.concatenate(workers)
    expected = [values.var(ddof=1), values.var(), values.std(ddof=1), values.std()]
    assert found.to_pylist()[0] == pytest.approx(
        {f"_o{i}": e for i, e in enumerate(expected)}, rel=1e-6
    )
    one = fastmerge.run(spec, partials.slice(1, 1).set_column(0, "_k0", pa.array(["b"])))
    assert one is not None and one.to_pylist() == [
        {"_o0": None, "_o1": 0.0, "_o2": None, "_o3": 0.0}
    ]


def test_medians_match_the_engine() -> None:
    """MEDIAN from per-worker (value, count) rows: odd and even counts, NULLs ignored,
    integers averaged toward zero in their own type, an empty group NULL."""
    partials = pa.table(
        {
            "_k0": pa.array(["a", "a", "a", "b", "b", "c", "d", "d"]),
            "_d0": pa.array([-3, 2, None, 1, 4, None, 5, 2], pa.int32()),
            "_a0": pa.array([1, 1, 4, 2, 1, 3, 1, 1], pa.int64()),
        }
    )
    spec = Spec(True, ("_k0",), (("key", "_k0"), ("median", "_d0", "_a0")), (), None, None)
    found = fastmerge.run(spec, partials)
    assert found is not None and found.schema.types == [pa.string(), pa.int32()]
    assert sorted(found.to_pylist(), key=str) == [
        {"_o0": "a", "_o1": 0},
        {"_o0": "b", "_o1": 1},
        {"_o0": "c", "_o1": None},
        {"_o0": "d", "_o1": 3},
    ]
    engine = native.open(":memory:")
    try:
        engine.execute("CREATE SOURCE m (g VARCHAR, x INT)")
        engine.insert(
            "m",
            pa.table(
                {
                    "g": ["a", "a", "b", "b", "b", "c", "d", "d"],
                    "x": pa.array([-3, 2, 1, 1, 4, None, 5, 2], pa.int32()),
                }
            ),
        )
        theirs = engine.sql("SELECT g, median(x) FROM m GROUP BY g").to_arrow().to_pylist()
    finally:
        engine.close()
    assert sorted((r["g"], r["median(m.x)"]) for r in theirs) == [
        ("a", 0),
        ("b", 1),
        ("c", None),
        ("d", 3),
    ]
