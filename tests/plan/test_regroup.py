"""The dense integer-key regrouping (`regroup`) against pyarrow's hash group_by, which
`fastmerge` used before and still uses for everything else: same groups, same values, same
types, NULL keys and all-NULL groups included; wrap-around of int64 sums; declines what it
cannot do exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laminardb.plan import fastmerge, regroup
from laminardb.plan.fastmerge import SortKey, Spec

pytestmark = pytest.mark.timeout(60)

AGGREGATES = [("c", "sum"), ("s", "sum"), ("f", "sum"), ("lo", "min"), ("hi", "max")]
KEY_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()]


def _pyarrow(
    partials: pa.Table, key: str, aggregates: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    done = partials.group_by([key], use_threads=False).aggregate(aggregates)
    names = [key, *(f"{c}_{f}" for c, f in aggregates)]
    rows: list[dict[str, Any]] = done.select(names).to_pylist()
    return sorted(rows, key=lambda r: (r[key] is None, r[key] or 0))


def _dense(partials: pa.Table, key: str, aggregates: list[tuple[str, str]]) -> list[dict[str, Any]]:
    found = regroup.regroup(partials, key, aggregates)
    assert found is not None
    keys, values = found
    table = pa.table({key: keys, **{f"{c}_{f}": values[(c, f)] for c, f in aggregates}})
    expected = partials.group_by([key], use_threads=False).aggregate(aggregates)
    assert table.schema == expected.select(table.column_names).schema
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


optional_int = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))


@st.composite
def partials(draw: st.DrawFn) -> pa.Table:
    typ = draw(st.sampled_from(KEY_TYPES))
    info = np.iinfo(typ.to_pandas_dtype())
    base = draw(st.integers(int(info.min), int(info.max)))
    width = draw(st.integers(0, 50))
    n = draw(st.integers(1, 40))
    keys = [
        None
        if draw(st.integers(0, 9)) == 0
        else min(int(info.max), base + draw(st.integers(0, width)))
        for _ in range(n)
    ]
    ints = st.one_of(st.none(), st.integers(-(2**62), 2**62))
    floats = st.one_of(st.none(), st.floats(-1e6, 1e6))
    return pa.table(
        {
            "k": pa.array(keys, typ),
            "c": pa.array(
                draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)), pa.int64()
            ),
            "s": pa.array(draw(st.lists(ints, min_size=n, max_size=n)), pa.int64()),
            "f": pa.array(draw(st.lists(floats, min_size=n, max_size=n)), pa.float64()),
            "lo": pa.array(draw(st.lists(optional_int, min_size=n, max_size=n)), pa.int64()),
            "hi": pa.array(
                draw(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=n, max_size=n)),
                pa.int16(),
            ),
        }
    )


@settings(max_examples=150, deadline=None)
@given(partials())
def test_regroup_equals_pyarrow_group_by(table: pa.Table) -> None:
    mine = _dense(table, "k", AGGREGATES)
    theirs = _pyarrow(table, "k", AGGREGATES)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            if name == "f_sum" and a[name] is not None and b[name] is not None:
                assert a[name] == pytest.approx(b[name], rel=1e-12, abs=1e-9)
            else:
                assert a[name] == b[name], name


def test_int64_sums_wrap_around_like_the_engine() -> None:
    big = 2**63 - 1
    table = pa.table({"k": pa.array([1, 1, 2], pa.int64()), "s": pa.array([big, 1, 5])})
    keys, values = regroup.regroup(table, "k", [("s", "sum")]) or (None, {})
    assert keys is not None and keys.to_pylist() == [1, 2]
    assert values[("s", "sum")].to_pylist() == [-(2**63), 5]


def test_declines_what_it_cannot_do_exactly() -> None:
    table = pa.table(
        {
            "k": pa.array([0, 10**9], pa.int64()),
            "f": pa.array([1.0, 2.0]),
            "i": pa.array([1, 2], pa.int32()),
            "s": pa.array(["a", "b"]),
        }
    )
    assert regroup.regroup(table, "k", [("f", "sum")]) is None  # range too wide
    narrow = table.slice(0, 1)
    assert regroup.regroup(narrow, "k", [("f", "min")]) is None  # float MIN: pyarrow's
    assert regroup.regroup(narrow, "k", [("i", "sum")]) is None  # int32 SUM widens
    assert regroup.regroup(narrow, "s", [("f", "sum")]) is None  # not an integer key
    assert regroup.regroup(narrow, "k", [("f", "count_distinct")]) is None


def test_fast_merge_top_n_over_many_dense_groups() -> None:
    """The shape of the benchmark's top-10: 2 workers' partials over 100k groups."""
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(2):
        keys = rng.permutation(100_000)[:80_000]
        parts.append(pa.table({"_k0": keys, "_a0": rng.random(len(keys))}))
    table = pa.concat_tables(parts)
    spec = Spec(
        True, ("_k0",), (("key", "_k0"), ("sum", "_a0")), (SortKey("_o1", True, True),), 10, None
    )
    found = fastmerge.run(spec, table)
    done = table.group_by(["_k0"]).aggregate([("_a0", "sum")]).sort_by([("_a0_sum", "descending")])
    assert found is not None
    assert found.column("_o0").to_pylist() == done.column("_k0").to_pylist()[:10]
    assert found.column("_o1").to_pylist() == pytest.approx(done.column("_a0_sum").to_pylist()[:10])
