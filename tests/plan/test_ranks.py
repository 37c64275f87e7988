"""MEDIAN / PERCENTILE_CONT plans learn when their partials are mostly distinct values and
are gathered then (`laminardb/plan/ranks.py`); the rank merge's sort order is the engine's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import laminardb_native
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import laminardb
from laminardb.plan import distributed, fastmerge, ranks
from laminardb.plan.fastmerge import Spec
from laminardb.plan.moments import Staged
from laminardb.plan.split import plan

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    ranks.forget()
    yield
    ranks.forget()


def _spec(*outputs: tuple[str, ...]) -> Spec:
    return Spec(True, ("_k0",), (("key", "_k0"), *outputs), (), None, None)


def test_only_ranking_plans_have_a_weight() -> None:
    assert ranks.weight_column(None) is None
    assert ranks.weight_column(_spec(("sum", "_a0"))) is None
    assert ranks.weight_column(_spec(("median", "_d0", "_a1"))) == "_a1"
    assert ranks.weight_column(_spec(("sum", "_a0"), ("percentile", "_d0", "_a2", "0.5"))) == "_a2"
    staged = Staged(
        ("_k0",), (("_m0", "var_pop", "_a0", "_a1", "_a2"), ("_m1", "median", "_d0", "_a3"))
    )
    assert ranks.weight_column(None, staged) == "_a3"


def _partials(rows: int, count_each: int) -> pa.Table:
    return pa.table({"_d0": np.arange(rows), "_a0": np.full(rows, count_each, np.int64)})


def test_learns_wide_plans_and_tries_them_again_later() -> None:
    ranks.learn("narrow", _partials(2_000, 100), "_a0", now=0.0)  # 2,000 rows for 200,000
    assert not ranks.is_wide("narrow", now=1.0)
    ranks.learn("few", _partials(900, 1), "_a0", now=0.0)  # all distinct, but a few rows
    assert not ranks.is_wide("few", now=1.0)
    ranks.learn("wide", _partials(5_000, 1), "_a0", now=0.0)
    assert ranks.is_wide("wide", now=1.0)
    assert not ranks.is_wide("wide", now=ranks.RELEARN_S + 1.0)  # tried again
    ranks.learn("wide", _partials(5_000, 1), "_a0", now=0.0)
    ranks.learn("wide", _partials(5_000, 100), "_a0", now=2.0)  # the data changed
    assert not ranks.is_wide("wide", now=3.0)


@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=40))
def test_floats_rank_in_the_engines_order(values: list[float]) -> None:
    """-0.0 before 0.0 (IEEE total order), as the engine ranks them."""
    for dtype in (np.float64, np.float32):
        with np.errstate(over="ignore"):  # doubles past REAL's range become infinities
            array = np.array(values, dtype=dtype)
        ranked = array[np.argsort(fastmerge._total_order(array), kind="stable")]
        assert bool(np.all(ranked[:-1] <= ranked[1:]))
        zeros = ranked[ranked == 0]
        assert list(np.signbit(zeros)) == sorted(np.signbit(zeros), reverse=True)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, Any]]:
    """One native instance and 2 workers: 4 groups of 3,000 rows, `v` all distinct, `i` 5 values."""
    rows = 12_000
    data = pa.table(
        {
            "id": pa.array(np.arange(rows), pa.int64()),
            "g": pa.array(np.arange(rows) % 4, pa.int64()),
            "v": pa.array(np.random.default_rng(5).random(rows)),
            "i": pa.array(np.arange(rows) % 5, pa.int64()),
        }
    )
    ddl = "CREATE SOURCE m (id BIGINT, g BIGINT, v DOUBLE, i BIGINT)"
    single = laminardb_native.open(":memory:")
    cluster = laminardb.open(":memory:", workers=2)
    try:
        single.execute(ddl)
        cluster.execute(ddl + " PARTITION BY (id)")
        single.insert("m", data)
        cluster.insert("m", data)
        yield single, cluster
    finally:
        cluster.close()
        single.close()


@pytest.mark.parametrize(
    ("sql", "wide"),
    [
        ("SELECT g, median(v) AS x FROM m GROUP BY g", True),
        ("SELECT g, percentile_cont(v, 0.9) AS x FROM m GROUP BY g", True),
        ("SELECT g, median(i) AS x FROM m GROUP BY g", False),
        ("SELECT g, percentile_cont(i, 0.25) AS x, count(*) AS n FROM m GROUP BY g", False),
        ("SELECT g, median(v) + 1 AS x FROM m GROUP BY g", True),  # staged: in an expression
        ("SELECT g, percentile_cont(i, 0.5) * 2 + count(*) AS x FROM m GROUP BY g", False),
    ],
)
def test_a_wide_plan_is_gathered_after_its_first_run(
    pair: tuple[Any, Any], sql: str, wide: bool
) -> None:
    single, cluster = pair
    expected = sorted(single.sql(sql).to_arrow().to_pylist(), key=lambda r: r["g"])
    found = plan(sql, cluster._catalog)
    assert found is not None
    assert distributed.refusal(found, cluster._catalog) is None  # nothing learnt yet
    for _ in range(2):  # the two-phase plan, then (when wide) the gather path
        answer = cluster.sql(sql).to_arrow()
        assert sorted(answer.to_pylist(), key=lambda r: r["g"]) == expected
    reason = distributed.refusal(found, cluster._catalog)
    assert (reason is not None and "mostly distinct" in reason) is wide
    rows = dict(zip(*cluster.explain(sql).to_pydict().values(), strict=True))
    assert rows["distributed_plan"] == ("gather" if wide else "two-phase")
