"""The in-process sort-and-cut merge of co-partitioned join plans (`fastmerge.cut`) against
the SQL merge it replaces (`extended.merge`, one native engine): same rows in the same order,
NULL placement and OFFSET included; other SQL is left to the engine."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laminardb.plan import extended, fastmerge
from laminardb.plan.split import PARTIALS

pytestmark = pytest.mark.timeout(60)


def test_cut_spec_reads_only_sort_and_cut() -> None:
    spec = fastmerge.cut_spec(
        f'SELECT * FROM {PARTIALS} ORDER BY ("_p1") DESC NULLS FIRST, ("_p0") ASC NULLS LAST'
        " LIMIT 10 OFFSET 2",
        PARTIALS,
        2,
    )
    assert spec is not None
    assert [(k.column, k.desc, k.nulls_first) for k in spec.order] == [
        ("_p1", True, True),
        ("_p0", False, False),
    ]
    assert (spec.limit, spec.offset, len(spec.outputs)) == (10, 2, 2)
    for other in (
        f"SELECT DISTINCT * FROM {PARTIALS}",
        f'SELECT * FROM {PARTIALS} ORDER BY ("_p2") ASC NULLS LAST',  # no such column
        f'SELECT * FROM {PARTIALS} ORDER BY "_p0" + 1 ASC NULLS LAST',
        "SELECT * FROM other LIMIT 1",
    ):
        assert fastmerge.cut_spec(other, PARTIALS, 2) is None, other


def test_cut_declines_types_it_cannot_sort_like_the_engine() -> None:
    rows = pa.table({"_p0": pa.array([[1], [0]], pa.list_(pa.int64()))})
    sql = f'SELECT * FROM {PARTIALS} ORDER BY ("_p0") ASC NULLS LAST LIMIT 1'
    assert fastmerge.cut(sql, PARTIALS, rows) is None


small = st.one_of(st.none(), st.integers(-3, 3))
words = st.one_of(st.none(), st.sampled_from(["", "a", "b", "ab", "é", "Z"]))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(small, words, small), min_size=0, max_size=12),
    st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.booleans()), min_size=1, max_size=3),
    st.one_of(st.none(), st.integers(0, 5)),
    st.one_of(st.none(), st.integers(0, 3)),
)
def test_cut_equals_the_sql_merge(
    data: list[tuple[int | None, str | None, int | None]],
    keys: list[tuple[int, bool, bool]],
    limit: int | None,
    offset: int | None,
) -> None:
    rows = pa.table(
        {
            "_p0": pa.array([r[0] for r in data], pa.int64()),
            "_p1": pa.array([r[1] for r in data], pa.string()),
            "_p2": pa.array([r[2] for r in data], pa.int32()),
        }
    )
    # every column is a key (ties then cannot make two right answers differ)
    used = {k[0] for k in keys}
    order = [*keys, *((c, False, False) for c in range(3) if c not in used)]
    sql = f"SELECT * FROM {PARTIALS} ORDER BY " + ", ".join(
        f'("_p{c}") {"DESC" if desc else "ASC"} NULLS {"FIRST" if first else "LAST"}'
        for c, desc, first in order
    )
    sql += (f" LIMIT {limit}" if limit is not None else "") + (
        f" OFFSET {offset}" if offset is not None else ""
    )
    mine = fastmerge.cut(sql, PARTIALS, rows)
    theirs = extended.merge(sql, {PARTIALS: rows})
    assert mine is not None
    assert mine.schema.types == theirs.schema.types
    assert mine.to_pylist() == [
        dict(zip(mine.column_names, r.values(), strict=True)) for r in theirs.to_pylist()
    ]
