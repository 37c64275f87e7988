"""VAR/STDDEV/MEDIAN inside expressions, HAVING and ORDER BY (`moments`, two-stage merge).

Golden rewrites (input SQL -> worker SQL, merge SQL, the `Staged` first stage), unit tests
of `moments.attach`, and a differential test: a 2-worker cluster (every row its own insert
batch, so groups span both workers) through `distributed.execute` against one native
instance, with NULLs, one-row groups, all-NULL groups, a NULL group, integer and float
columns, HAVING over an aggregate not selected, ORDER BY an expression of them + LIMIT, and
global aggregates over no rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import distributed, moments
from laminardb.plan.split import PARTIALS, plan

pytestmark = pytest.mark.timeout(90)

SCHEMA = pa.schema([("g", pa.string()), ("k", pa.int32()), ("v", pa.int64()), ("d", pa.float64())])
P = PARTIALS


def test_median_in_an_expression_is_gathered_when_staging_is_off(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert moments.STAGE_MEDIAN  # on by default: `ranks` gathers the mostly distinct ones
    monkeypatch.setattr(moments, "STAGE_MEDIAN", False)
    assert plan("SELECT g, median(v) + 1 FROM r WHERE k > 0 GROUP BY g", catalog) is None
    assert plan("SELECT g, median(v) FROM r WHERE k > 0 GROUP BY g", catalog) is not None
    found = plan("SELECT g, stddev(v) + 1 FROM r WHERE k > 0 GROUP BY g", catalog)
    assert found is not None and found.staged is not None


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    found = Catalog()
    found.add(Relation("r", "source", SCHEMA, ""))
    return found


GOLDEN = [
    (
        "SELECT g, stddev(v) * 2 FROM r GROUP BY g",
        'SELECT g AS "_k0", count(v) AS "_a0", avg(v) AS "_a1", var_pop(v) AS "_a2" '
        "FROM r GROUP BY 1",
        f'SELECT "_k0" AS "_o0", MAX("_m0") * 2 AS "_o1" FROM {P} GROUP BY "_k0"',
        moments.Staged(("_k0",), (("_m0", "stddev_samp", "_a0", "_a1", "_a2"),)),
    ),
    (
        "SELECT g, count(*) FROM r GROUP BY g HAVING var_samp(v) > 1",
        'SELECT g AS "_k0", count(*) AS "_a0", count(v) AS "_a1", avg(v) AS "_a2", '
        'var_pop(v) AS "_a3" FROM r GROUP BY 1',
        f'SELECT "_k0" AS "_o0", COALESCE(SUM("_a0"), 0) AS "_o1" FROM {P} GROUP BY "_k0" '
        'HAVING MAX("_m0") > 1',
        moments.Staged(("_k0",), (("_m0", "var_samp", "_a1", "_a2", "_a3"),)),
    ),
    (
        "SELECT g, median(v) + 1 AS m FROM r GROUP BY g ORDER BY var_pop(d) DESC, g LIMIT 2",
        'SELECT g AS "_k0", v AS "_d0", count(*) AS "_a0", count(d) AS "_a1", '
        'avg(d) AS "_a2", var_pop(d) AS "_a3" FROM r GROUP BY 1, 2',
        f'SELECT "_k0" AS "_o0", MAX("_m0") + 1 AS "_o1" FROM {P} GROUP BY "_k0" '
        'ORDER BY (MAX("_m1")) DESC NULLS FIRST, ("_o0") ASC NULLS LAST LIMIT 2',
        moments.Staged(
            ("_k0",),
            (("_m0", "median", "_d0", "_a0"), ("_m1", "var_pop", "_a1", "_a2", "_a3")),
        ),
    ),
    (
        "SELECT var_samp(d) / count(DISTINCT v) FROM r",
        'SELECT v AS "_d0", count(d) AS "_a0", avg(d) AS "_a1", var_pop(d) AS "_a2" '
        "FROM r GROUP BY 1",
        f'SELECT MAX("_m0") / COUNT(DISTINCT "_d0") AS "_o0" FROM {P}',
        moments.Staged((), (("_m0", "var_samp", "_a0", "_a1", "_a2"),)),
    ),
]


@pytest.mark.parametrize(("sql", "worker", "merge", "staged"), GOLDEN)
def test_golden_rewrites(
    catalog: Catalog, sql: str, worker: str, merge: str, staged: moments.Staged
) -> None:
    found = plan(sql, catalog)
    assert found is not None, sql
    assert (found.worker_sql, found.merge_sql, found.staged) == (worker, merge, staged)
    assert found.fast is None


def test_plain_items_keep_the_in_process_merge(catalog: Catalog) -> None:
    found = plan("SELECT g, var_samp(d), median(v), count(*) FROM r GROUP BY g", catalog)
    assert found is not None and found.fast is not None
    assert found.merge_sql is None and found.staged is None


def test_still_refused(catalog: Catalog) -> None:
    """Two MEDIAN arguments need two distinct-value groupings: the gather path answers."""
    assert plan("SELECT median(v) + median(d) FROM r", catalog) is None
    assert plan("SELECT median(v) FROM r HAVING count(DISTINCT d) > 1", catalog) is None


def test_attach_widens_every_row_with_its_group_value() -> None:
    partials = pa.table(
        {
            "_k0": pa.array(["a", "a", None, "b"]),
            "_d0": pa.array([1, 3, 5, None], pa.int32()),
            "_a0": pa.array([1, 2, 1, 4], pa.int64()),
        }
    )
    staged = moments.Staged(("_k0",), (("_m0", "median", "_d0", "_a0"),))
    found = moments.attach(staged, partials)
    assert found is not None
    assert found.column("_m0").type == pa.int32()
    assert found.column("_m0").to_pylist() == [3, 3, 5, None]
    glob = moments.attach(moments.Staged((), staged.moments), partials.slice(0, 0))
    assert glob is not None and glob.num_rows == 0 and "_m0" in glob.column_names


def test_attach_declines_what_the_engine_could_answer_differently() -> None:
    staged = moments.Staged(("_k0",), (("_m0", "median", "_d0", "_a0"),))
    nan = pa.table({"_k0": [1], "_d0": [math.nan], "_a0": [1]})
    assert moments.attach(staged, nan) is None
    text = pa.table({"_k0": [1], "_d0": ["x"], "_a0": [1]})
    assert moments.attach(staged, text) is None
    for key in (math.nan, -0.0, 0.0):
        float_key = pa.table({"_k0": [1.5, key], "_d0": [1, 2], "_a0": [1, 1]})
        assert moments.attach(staged, float_key) is None
    plain = moments.attach(staged, pa.table({"_k0": [1.5, 2.5], "_d0": [1, 2], "_a0": [1, 1]}))
    assert plain is not None and plain.column("_m0").to_pylist() == [1, 2]


DDL = "CREATE SOURCE m (g VARCHAR, k INT, v BIGINT, d DOUBLE, i INT)"
ROWS = pa.table(
    {
        "g": pa.array(["a", "a", "a", "b", "c", "c", None, None, "a", "d", "a", "e"]),
        "k": pa.array(list(range(1, 13)), pa.int32()),
        "v": pa.array([1, 5, None, 7, None, None, 3, 4, 10, 2**40, -6, 8], pa.int64()),
        "d": pa.array(
            [0.5, 1.5, 2.25, None, None, None, 3.0, -1.0, 9.0, 1e10, 0.125, 2.0], pa.float64()
        ),
        "i": pa.array([1, 2, 3, 4, None, None, 7, 8, 9, -3, 2, 6], pa.int32()),
    }
)

QUERIES = [
    "SELECT g, stddev(v) * 2 FROM m GROUP BY g",
    "SELECT g, var_samp(d) + var_pop(v) AS x, count(*) FROM m GROUP BY g",
    "SELECT g, count(*) FROM m GROUP BY g HAVING var_samp(v) > 1",
    "SELECT g FROM m GROUP BY g HAVING median(i) >= 3 AND stddev_pop(d) IS NOT NULL",
    "SELECT g, median(v), count(*) FROM m GROUP BY g ORDER BY 2 DESC, g LIMIT 5",
    "SELECT g, median(i) * 2 AS m2 FROM m GROUP BY g ORDER BY stddev_pop(d) * 10 + 1 DESC, g "
    "LIMIT 3",
    "SELECT g, stddev(v) / avg(v), median(d) - min(d) FROM m GROUP BY g",
    "SELECT k % 2 AS p, median(d) - min(d), var_pop(i) FROM m GROUP BY k % 2",
    "SELECT var_samp(v) * 2, avg(d), median(i) + 1 FROM m",
    "SELECT var_samp(v) * 2, avg(d), median(i) + 1 FROM m WHERE k < 0",
    "SELECT g, stddev(v) + 1 FROM m WHERE k < 0 GROUP BY g",
    "SELECT g, median(i) / 2, stddev_samp(i) FROM m WHERE v IS NULL GROUP BY g",
    "SELECT g, stddev(v) AS s FROM m GROUP BY g HAVING s > 1 ORDER BY s DESC, g LIMIT 2",
    "SELECT g, median(v) * count(DISTINCT v) FROM m GROUP BY g",
    "SELECT d, stddev(v) * 2, median(i) - 1 FROM m GROUP BY d",
]


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Any, Any]]:
    conn = laminardb.open(":memory:", workers=2, split_rows=1)
    one = native.open(":memory:")
    try:
        for engine in (conn, one):
            engine.execute(DDL)
            engine.insert("m", ROWS)
        yield conn, one
    finally:
        conn.close()
        one.close()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return bool(a == b) and type(a) is type(b)


def _rows(table: pa.Table, ordered: bool) -> list[tuple[Any, ...]]:
    rows = [tuple(r.values()) for r in table.to_pylist()]
    return rows if ordered else sorted(rows, key=repr)


@pytest.mark.parametrize("sql", QUERIES)
def test_two_workers_answer_as_one_native_instance(engines: tuple[Any, Any], sql: str) -> None:
    conn, one = engines
    conn.sql("SELECT count(*) FROM m")  # flushes pending inserts
    found = distributed.cached_plan(sql, conn._catalog)
    assert found is not None, sql
    assert found.staged is not None or found.fast is not None, sql
    ours = distributed.execute(found, conn._catalog, distributed.cluster_fetch(conn._cluster))
    theirs = one.sql(sql).to_arrow()
    _assert_same(sql, ours, theirs, ordered="ORDER BY" in sql)
    _assert_same(sql, conn.sql(sql).to_arrow(), theirs, ordered="ORDER BY" in sql)


def _assert_same(sql: str, ours: pa.Table, theirs: pa.Table, *, ordered: bool) -> None:
    """Same schema (names, types, nullability) and rows, floats within 1e-9 relative."""
    assert ours.schema == theirs.schema, sql
    mine, native_rows = _rows(ours, ordered), _rows(theirs, ordered)
    assert len(mine) == len(native_rows), sql
    for a, b in zip(mine, native_rows, strict=True):
        assert all(_same(x, y) for x, y in zip(a, b, strict=True)), (sql, mine, native_rows)


def test_a_zero_float_group_key_falls_back_to_the_native_answer(engines: tuple[Any, Any]) -> None:
    """NaN / -0.0 / 0.0 grouping is the engine's: the first stage declines and the gather
    path answers (still the single instance's answer)."""
    conn, one = engines
    sql = "SELECT d - 0.5 AS z, stddev(v) * 2 FROM m GROUP BY d - 0.5"
    found = distributed.cached_plan(sql, conn._catalog)
    assert found is not None and found.staged is not None
    with pytest.raises(distributed.Fallback, match="declined"):
        distributed.execute(found, conn._catalog, distributed.cluster_fetch(conn._cluster))
    _assert_same(sql, conn.sql(sql).to_arrow(), one.sql(sql).to_arrow(), ordered=False)


def test_explain_names_the_first_stage(engines: tuple[Any, Any]) -> None:
    conn, _ = engines
    plan = conn.explain("SELECT g, count(*) FROM m GROUP BY g HAVING var_samp(v) > 1")
    rows = dict(zip(plan.column(0).to_pylist(), plan.column(1).to_pylist(), strict=True))
    assert rows["distributed_plan"] == "two-phase"
    assert rows["merge"].startswith("in process: _m0 = var_samp per group; then SELECT")
