"""Unit tests of the differential comparator (corpus README, step 3).

Every test checks both directions, what must agree and what must not, so a comparator that
accepts everything or rejects everything fails it. The last tests mutate the comparator's
tolerances to show the float tests depend on them.
"""

from __future__ import annotations

import datetime
import decimal
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from harness import (
    ErrorInfo,
    NativeStandIn,
    Outcome,
    check_file,
    compare_outcomes,
    compare_rows,
    each_column_keyed,
    floats_equal,
    load,
    open_single,
    run_file,
    run_query,
    table_rows,
    values_equal,
)

pytestmark = pytest.mark.timeout(60)

Rows = list[tuple[Any, ...]]


def rows_outcome(rows: Rows, types: tuple[str, ...] | None = None) -> Outcome:
    """An Outcome holding `rows` (types default to one `double` per column)."""
    width = len(rows[0]) if rows else 1
    return Outcome(rows, types or ("double",) * width, tuple(f"c{i}" for i in range(width)))


def error_outcome(kind: str, message: str = "boom", code: int | None = 400) -> Outcome:
    """An Outcome for a raised error of class `kind`."""
    return Outcome(None, error=ErrorInfo(kind, message, code))


# --- floats ----------------------------------------------------------------------------------


def test_float_relative_tolerance() -> None:
    """Within 1e-9 relative is equal, 1e-8 relative is not, at any magnitude."""
    for base in (1.0, 12345.678, 1e300, -3.5e-2):
        assert floats_equal(base, base * (1 + 5e-10))
        assert not floats_equal(base, base * (1 + 1e-8))
    assert compare_rows([(1e6,)], [(1e6 + 1e-4,)], ordered=True) is None
    assert compare_rows([(1e6,)], [(1e6 + 1e-2,)], ordered=True) is not None


def test_float_absolute_slack_near_zero() -> None:
    """Near zero an absolute 1e-12 applies (sum order); 1e-9 absolute is too much."""
    assert floats_equal(0.0, 5e-13)
    assert floats_equal(1e-13, -1e-13)
    assert not floats_equal(0.0, 1e-9)
    assert not floats_equal(1e-11, -1e-11)


def test_negative_zero_equals_zero() -> None:
    """-0.0 and 0.0 agree, in values and in multiset sorting; 0.0 and 1e-6 do not."""
    assert values_equal(-0.0, 0.0)
    assert compare_rows([(-0.0, "a"), (0.0, "b")], [(0.0, "a"), (-0.0, "b")], False) is None
    assert compare_rows([(-0.0,)], [(1e-6,)], False) is not None


def test_nan_and_infinity() -> None:
    """NaN equals only NaN; infinities equal only themselves."""
    nan, inf = math.nan, math.inf
    assert values_equal(nan, nan)
    assert not values_equal(nan, 0.0)
    assert not values_equal(0.0, nan)
    assert not values_equal(nan, None)
    assert values_equal(inf, inf)
    assert not values_equal(inf, -inf)
    assert not values_equal(inf, 1e308)
    assert compare_rows([(nan,), (1.0,)], [(1.0,), (nan,)], False) is None
    assert compare_rows([(nan,), (1.0,)], [(1.0,), (2.0,)], False) is not None


def test_int_and_float_mix() -> None:
    """An int and a float compare with the float rule; ints alone compare exactly."""
    assert values_equal(3, 3.0)
    assert values_equal(3, 3.0000000000001)
    assert not values_equal(3, 3.1)
    assert not values_equal(2**62, 2**62 + 1)
    assert values_equal(decimal.Decimal("1.5"), 1.5)
    assert not values_equal(decimal.Decimal("1.5"), decimal.Decimal("1.6"))


# --- NULLs and kinds -------------------------------------------------------------------------


def test_null_equals_only_null() -> None:
    """NULL agrees with NULL only: not 0, not '', not False, not NaN."""
    assert values_equal(None, None)
    others: list[Any] = [0, 0.0, "", False, math.nan, []]
    for other in others:
        assert not values_equal(None, other)
        assert not values_equal(other, None)
    assert compare_rows([(None, 1)], [(None, 1)], True) is None
    assert compare_rows([(None, 1)], [(0, 1)], True) is not None


def test_bool_is_not_an_int() -> None:
    """True agrees with True only (Python's True == 1 must not leak in)."""
    assert values_equal(True, True)
    assert not values_equal(True, 1)
    assert not values_equal(0, False)
    assert not values_equal(True, False)


def test_strings_dates_and_nested_values() -> None:
    """Strings, temporals and lists compare exactly; lists element-wise with float slack."""
    assert values_equal("a", "a")
    assert not values_equal("a", "a ")
    day = datetime.date(2024, 1, 2)
    assert values_equal(day, datetime.date(2024, 1, 2))
    assert not values_equal(day, datetime.date(2024, 1, 3))
    assert not values_equal(day, "2024-01-02")
    assert values_equal([1.0, None], [1.0 + 1e-12, None])
    assert not values_equal([1.0, None], [1.0, 2.0])
    assert not values_equal([1.0], [1.0, 1.0])
    assert values_equal({"x": 1, "y": "a"}, {"p": 1, "q": "a"})  # structs by position
    assert not values_equal({"x": 1}, {"x": 2})


# --- multisets and order ---------------------------------------------------------------------


def test_multiset_ignores_order() -> None:
    """Unordered: any row order agrees; ordered: the same rows in another order do not."""
    a: Rows = [(1, "x"), (2, "y"), (None, "z")]
    b: Rows = [(None, "z"), (2, "y"), (1, "x")]
    assert compare_rows(a, b, ordered=False) is None
    diff = compare_rows(a, b, ordered=True)
    assert diff is not None and "row 0" in diff


def test_ordered_compares_sequences() -> None:
    """Ordered: equal sequences agree; a missing tail row is reported."""
    a: Rows = [(1,), (2,), (3,)]
    assert compare_rows(a, list(a), ordered=True) is None
    diff = compare_rows(a, a[:2], ordered=True)
    assert diff is not None and "3 vs 2" in diff


def test_duplicate_rows_count() -> None:
    """Multisets count duplicates: [a, a, b] differs from [a, b, b] and from [a, b]."""
    assert compare_rows([(1,), (1,), (2,)], [(2,), (1,), (1,)], False) is None
    assert compare_rows([(1,), (1,), (2,)], [(1,), (2,), (2,)], False) is not None
    assert compare_rows([(1,), (1,), (2,)], [(1,), (2,)], False) is not None
    assert compare_rows([], [], False) is None
    assert compare_rows([], [(1,)], False) is not None


def test_mixed_kinds_sort_without_error() -> None:
    """A column mixing NULL, numbers, strings and NaN still sorts canonically."""
    a: Rows = [(None,), ("s",), (1,), (math.nan,), (2.5,), (True,)]
    assert compare_rows(a, list(reversed(a)), False) is None
    assert compare_rows(a, [*a[:-1], (False,)], False) is not None


def test_tolerant_rows_that_sort_differently() -> None:
    """Floats equal within tolerance but sorting the other way still pair up."""
    a: Rows = [(1.0, "b"), (1.0 + 1e-12, "a")]
    b: Rows = [(1.0 + 2e-12, "b"), (1.0, "a")]
    assert compare_rows(a, b, False) is None
    assert compare_rows(a, [(1.0, "b"), (1.0, "c")], False) is not None


def test_column_count_differs() -> None:
    """Rows of another width never agree."""
    assert compare_rows([(1, 2)], [(1,)], False) is not None
    assert compare_outcomes(rows_outcome([(1.0, 2.0)]), rows_outcome([(1.0,)]), False) == (
        "shape",
        "columns 2 vs 1: single=['c0', 'c1'] cluster=['c0']",
    )


def test_columns_compared_by_position_not_name() -> None:
    """Output names may differ or repeat; only positions count. Swapped columns differ."""
    a = Outcome([(1, "x")], ("int64", "string"), ("id", "id"))
    b = Outcome([(1, "x")], ("int64", "string"), ("a", "b"))
    assert compare_outcomes(a, b, True) is None
    c = Outcome([("x", 1)], ("string", "int64"), ("id", "id"))
    assert compare_outcomes(a, c, True) is not None


def test_table_rows_keeps_duplicate_names() -> None:
    """Arrow tables with repeated column names become full-width rows (to_pylist would not)."""
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array(["a", "b"])], names=["x", "x"])
    assert table_rows(table) == [(1, "a"), (2, "b")]


def test_types_are_checked() -> None:
    """Equal values with another Arrow type are a `types` mismatch (unless disabled)."""
    a = Outcome([(1,)], ("int64",), ("n",))
    b = Outcome([(1,)], ("int32",), ("n",))
    found = compare_outcomes(a, b, False)
    assert found is not None and found[0] == "types"
    assert compare_outcomes(a, b, False, check_types=False) is None


# --- errors ----------------------------------------------------------------------------------


def test_errors() -> None:
    """Same error class agrees (message and code aside); other class or rows vs error don't."""
    assert (
        compare_outcomes(error_outcome("QueryError"), error_outcome("QueryError", "x", 401), False)
        is None
    )
    found = compare_outcomes(error_outcome("QueryError"), error_outcome("SchemaError"), False)
    assert found is not None and found[0] == "error"
    found = compare_outcomes(error_outcome("QueryError"), rows_outcome([(1.0,)]), False)
    assert found is not None and found[0] == "error"
    found = compare_outcomes(rows_outcome([]), error_outcome("QueryError"), False)
    assert found is not None and found[0] == "error"


def test_run_query_captures_native_errors_and_rows() -> None:
    """A native QueryError becomes an ErrorInfo; rows come back by position."""
    with NativeStandIn() as conn:
        conn.execute("CREATE SOURCE cmp_t (a INT, b VARCHAR) PARTITION BY (a)")
        conn.insert("cmp_t", pa.table({"a": pa.array([1, 2], pa.int32()), "b": ["x", None]}))
        bad = run_query(conn, "SELECT nope FROM cmp_t")
        assert bad.error is not None and bad.error.kind == "QueryError" and bad.error.code == 400
        good = run_query(conn, "SELECT a, b, a + 1 AS c FROM cmp_t")
        assert good.error is None and good.types == ("int32", "string", "int64")
        assert compare_rows([(1, "x", 2), (2, None, 3)], good.rows or [], False) is None
        assert compare_rows([(1, "x", 2), (2, None, 2)], good.rows or [], False) is not None


# --- partitioning and loading ----------------------------------------------------------------


def test_each_column_keyed_keeps_co_read_tables_round_robin() -> None:
    """Every (table, column) is keyed once, never together with a table read alongside it."""
    doc: dict[str, Any] = {
        "tables": [
            {"name": "t1", "columns": [{"name": "a", "type": "INT"}, {"name": "b", "type": "INT"}]},
            {"name": "t2", "columns": [{"name": "c", "type": "INT"}]},
            {"name": "t3", "columns": [{"name": "d", "type": "INT"}]},
        ],
        "queries": [
            {"id": "q:1", "tables": ["t1", "t2"]},
            {"id": "q:2", "tables": ["t3"]},
        ],
    }
    rounds = each_column_keyed(doc)
    covered = sorted((t, k[0]) for r in rounds for t, k in r.keys.items())
    assert covered == [("t1", "a"), ("t1", "b"), ("t2", "c"), ("t3", "d")]
    for r in rounds:
        assert not {"t1", "t2"} <= r.keys.keys()
        assert r.queries == frozenset(
            q["id"] for q in doc["queries"] if set(q["tables"]) & r.keys.keys()
        )


def test_load_types_and_encodings() -> None:
    """Timestamps (epoch µs), dates (ISO), NULLs, empty and column-less tables load."""
    doc = {
        "tables": [
            {
                "name": "cmp_load",
                "columns": [
                    {"name": "ts", "type": "TIMESTAMP", "encoding": "epoch_micros"},
                    {"name": "d", "type": "DATE", "encoding": "iso_date"},
                    {"name": "x", "type": "DOUBLE"},
                ],
                "rows": [[1700000000000001, "2024-02-29", 1.5], [None, None, None]],
            },
            {"name": "cmp_empty", "columns": [{"name": "k", "type": "INT"}], "rows": []},
            {"name": "cmp_nocols", "columns": [], "rows": []},
        ],
        "queries": [],
    }
    with NativeStandIn() as conn:
        load(conn, doc, {"cmp_load": ["d"]})
        out = run_query(conn, "SELECT ts, d, x FROM cmp_load")
        expected = [
            (datetime.datetime(2023, 11, 14, 22, 13, 20, 1), datetime.date(2024, 2, 29), 1.5),
            (None, None, None),
        ]
        assert compare_rows(expected, out.rows or [], False) is None
        assert compare_rows(expected[:1], out.rows or [], False) is not None
        assert run_query(conn, "SELECT count(*) FROM cmp_empty").rows == [(0,)]


# --- the tests above can fail ----------------------------------------------------------------


def test_float_tests_depend_on_tolerances(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tolerances zeroed or widened, the float assertions above flip."""
    import harness

    monkeypatch.setattr(harness, "REL_TOL", 0.0)
    monkeypatch.setattr(harness, "ABS_TOL", 0.0)
    assert not floats_equal(1.0, 1.0 + 5e-10)
    assert not floats_equal(0.0, 5e-13)
    monkeypatch.setattr(harness, "REL_TOL", 1e-6)
    assert floats_equal(1.0, 1.0 + 1e-8)


class _Result:
    """A query result whose `to_arrow()` returns a fixed table."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def to_arrow(self) -> pa.Table:
        return self._table


class WrongEngine(NativeStandIn):
    """A native stand-in that answers wrongly: drops the last row, or nudges a double."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def sql(self, query: str) -> Any:
        table: pa.Table = self._conn.sql(query).to_arrow()
        if self.how == "drop" and table.num_rows:
            table = table.slice(0, table.num_rows - 1)
        if self.how == "nudge":
            columns = [
                pc.multiply(c, 1 + 1e-7) if pa.types.is_floating(c.type) else c
                for c in table.columns
            ]
            table = pa.Table.from_arrays(columns, schema=table.schema)
        return _Result(table)


WRONG_DOC: dict[str, Any] = {
    "_file": "wrong",
    "tables": [
        {
            "name": "cmp_wrong",
            "columns": [{"name": "k", "type": "INT"}, {"name": "v", "type": "DOUBLE"}],
            "rows": [[i % 3, i * 0.5 + 0.1] for i in range(12)],
        }
    ],
    "queries": [
        {"id": "w:1", "sql": "SELECT k, v FROM cmp_wrong", "ordered": False},
        {"id": "w:2", "sql": "SELECT k, sum(v) AS s FROM cmp_wrong GROUP BY k", "ordered": False},
        {"id": "w:3", "sql": "SELECT k FROM cmp_wrong WHERE k > 5", "ordered": False},
    ],
}


@pytest.mark.parametrize("how", ["drop", "nudge"])
def test_check_file_catches_a_wrong_engine(how: str) -> None:
    """End to end: a cluster that loses a row or drifts by 1e-7 is reported per query.

    w:3 returns no rows, so neither corruption changes it and it must pass; a correct
    engine (the plain stand-in) must pass everything.
    """
    single = open_single()
    try:
        with WrongEngine(how) as wrong:
            report = check_file(single, wrong, WRONG_DOC, {"cmp_wrong": ["k"]})
    finally:
        single.close()
    assert [m.query_id for m in report.mismatches] == ["w:1", "w:2"]
    assert all(m.kind == "rows" for m in report.mismatches)
    assert report.passed == ["w:3"]
    single = open_single()
    try:
        with NativeStandIn() as right:
            assert run_file(single, right, WRONG_DOC, {"cmp_wrong": ["k"]}) == []
    finally:
        single.close()
