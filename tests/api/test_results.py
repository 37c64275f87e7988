"""QueryResult, ExecuteResult, CheckpointResult and LaminarConfig against the native engine.

Each case builds the same data in one native instance and checks that our value classes,
built from the native result's Arrow table or properties, answer exactly like native.
"""

from __future__ import annotations

import datetime
import decimal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import laminardb_native as native
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from laminardb.api.config import LaminarConfig
from laminardb.api.results import CheckpointResult, ExecuteResult, QueryResult

pytestmark = pytest.mark.timeout(60)

SOURCE = "CREATE SOURCE s (ts BIGINT, device VARCHAR, value DOUBLE, t TIMESTAMP, b BOOLEAN, d DATE)"


SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("device", pa.string()),
        ("value", pa.float64()),
        ("t", pa.timestamp("us")),
        ("b", pa.bool_()),
        ("d", pa.date32()),
    ]
)


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    c = native.open(":memory:")
    c.execute(SOURCE)
    noon = datetime.datetime(2024, 1, 1, 12)
    first = {
        "ts": [1, 2, 3],
        "device": ["a", None, "c"],
        "value": [1.5, None, float("nan")],
        "t": [noon, None, noon + datetime.timedelta(hours=1)],
        "b": [True, None, False],
        "d": [datetime.date(2024, 1, 2), None, datetime.date(2024, 1, 3)],
    }
    c.insert("s", pa.table(first, schema=SCHEMA))
    for i in range(4, 8):
        row = {"ts": [i], "device": [f"d{i}"], "value": [float(i)], "t": [noon], "b": [True]}
        c.insert("s", pa.table({**row, "d": [None]}, schema=SCHEMA))
    yield c
    c.close()


QUERIES = {
    "mixed": "SELECT * FROM s WHERE ts <= 3",
    "batches": "SELECT ts, device FROM s",
    "empty": "SELECT * FROM s WHERE ts > 100",
    "exotic": (
        "SELECT now() AS n, to_timestamp_millis(ts) AS tm, CAST(ts AS INT) AS i32, "
        "CAST(ts AS DECIMAL(10,2)) AS dc, arrow_cast(ts, 'UInt64') AS u, make_array(ts, NULL) "
        "AS l, named_struct('a', ts) AS st, INTERVAL '1' SECOND AS iv, "
        "arrow_cast(ts, 'Duration(Second)') AS du, CAST(device AS VARCHAR) AS sv FROM s"
    ),
}


@pytest.fixture(params=sorted(QUERIES))
def pair(request: pytest.FixtureRequest, conn: Any) -> tuple[Any, QueryResult]:
    theirs = conn.sql(QUERIES[request.param])
    return theirs, QueryResult(theirs.to_arrow())


def tables_equal(a: Any, b: Any) -> bool:
    """Same schema and values, NaN equal to NaN (pyarrow's `equals` says NaN != NaN)."""
    return bool(a.schema.equals(b.schema)) and repr(a.to_pylist()) == repr(b.to_pylist())


def same(a: Any, b: Any) -> None:
    """Equal, treating NaN as equal to NaN and requiring the same Python types (via repr)."""
    assert repr(a) == repr(b)


def test_shape_and_schema(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    assert repr(ours) == repr(theirs) == str(ours)
    assert len(ours) == len(theirs) == ours.num_rows == theirs.num_rows
    assert ours.num_columns == theirs.num_columns
    assert ours.num_batches == theirs.num_batches
    assert ours.columns == theirs.columns
    assert ours.schema.equals(theirs.schema, check_metadata=True)


def test_rows(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    same(ours.fetchall(), theirs.fetchall())
    same(list(ours), list(theirs))
    same(ours.to_dicts(), theirs.to_dicts())
    same(ours.fetchall(), ours.fetchall())


def test_fetch_is_not_a_cursor(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    for _ in range(3):
        same(ours.fetchone(), theirs.fetchone())
    for size in (1, 2, 0, 1, 100):
        same(ours.fetchmany(size), theirs.fetchmany(size))
    same(ours.fetchmany(), theirs.fetchmany())


@pytest.mark.parametrize("bad", [-1, "a", 1.5, None])
def test_bad_sizes_fail_like_native(conn: Any, bad: Any) -> None:
    theirs = conn.sql(QUERIES["batches"])
    ours = QueryResult(theirs.to_arrow())
    for call in ("fetchmany", "show"):
        with pytest.raises(Exception) as native_err:
            getattr(theirs, call)(bad)
        with pytest.raises(Exception) as our_err:
            getattr(ours, call)(bad)
        assert type(our_err.value) is type(native_err.value)
        assert str(our_err.value) == str(native_err.value)


def _polars_or_error(result: Any, name: str, args: dict[str, Any]) -> Any:
    """The frame, or the type of what polars raised (it panics on interval columns)."""
    try:
        return getattr(result, name)(**args)
    except BaseException as err:  # polars raises a pyo3 PanicException, a BaseException
        return type(err)


def test_frames(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    assert tables_equal(ours.to_arrow(), theirs.to_arrow())
    assert tables_equal(ours.arrow(), theirs.arrow())
    pd.testing.assert_frame_equal(ours.to_pandas(), theirs.to_pandas())
    pd.testing.assert_frame_equal(ours.df(), theirs.df())
    calls: list[tuple[str, dict[str, Any]]] = [
        ("to_polars", {}),
        ("pl", {}),
        ("pl", {"lazy": True}),
        ("to_df", {}),
    ]
    for name, args in calls:
        expected = _polars_or_error(theirs, name, args)
        got = _polars_or_error(ours, name, args)
        assert type(got) is type(expected)
        if isinstance(expected, type):
            assert got is expected
        elif isinstance(expected, pl.LazyFrame):
            assert got.collect().equals(expected.collect())
        elif isinstance(expected, pa.Table):
            assert tables_equal(got, expected)
        else:
            assert got.equals(expected)


def test_arrow_stream_export(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    assert tables_equal(pa.table(ours), pa.table(theirs))
    reader = pa.RecordBatchReader.from_stream(ours)
    assert tables_equal(reader.read_all(), theirs.to_arrow())
    assert type(ours.__arrow_c_stream__()) is type(theirs.__arrow_c_stream__(None))


@pytest.mark.parametrize("max_rows", [None, 0, 1, 2, 50])
def test_show(
    pair: tuple[Any, QueryResult], capsys: pytest.CaptureFixture[str], max_rows: int | None
) -> None:
    theirs, ours = pair
    if pair[0].num_columns > 12:
        pytest.skip("pandas' wide output is the same code path")
    args: dict[str, Any] = {} if max_rows is None else {"max_rows": max_rows}
    theirs.show(**args)
    expected = capsys.readouterr().out
    ours.show(**args)
    assert capsys.readouterr().out == expected
    assert expected


def test_show_converts_only_the_shown_rows(capsys: pytest.CaptureFixture[str]) -> None:
    c = native.open(":memory:")
    c.execute("CREATE SOURCE n (i BIGINT)")
    c.insert("n", {"i": [1, None]})
    theirs = c.sql("SELECT * FROM n")
    theirs.show(max_rows=1)
    expected = capsys.readouterr().out
    QueryResult(theirs.to_arrow()).show(max_rows=1)
    assert capsys.readouterr().out == expected == "   i\n0  1\n"
    c.close()


def test_repr_html(pair: tuple[Any, QueryResult]) -> None:
    theirs, ours = pair
    assert ours._repr_html_() == theirs._repr_html_()


def test_without_pandas_or_polars(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = conn.sql(QUERIES["mixed"])
    ours = QueryResult(theirs.to_arrow())
    monkeypatch.setitem(sys.modules, "polars", None)
    assert type(ours.to_df()) is type(theirs.to_df()) is pd.DataFrame
    for call in ("to_polars", "pl"):
        with pytest.raises(ImportError):
            getattr(ours, call)()
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert ours._repr_html_() == theirs._repr_html_() == "<pre>QueryResult(rows=3, columns=6)</pre>"
    assert tables_equal(ours.to_df(), theirs.to_df())
    for call in ("to_pandas", "df", "show"):
        with pytest.raises(ImportError):
            getattr(theirs, call)()
        with pytest.raises(ImportError):
            getattr(ours, call)()


def test_conversions_of_common_types(conn: Any) -> None:
    rows = QueryResult(conn.sql(QUERIES["mixed"]).to_arrow()).fetchall()
    assert rows[0] == (
        1,
        "a",
        1.5,
        datetime.datetime(2024, 1, 1, 12),
        True,
        datetime.date(2024, 1, 2),
    )
    assert rows[1] == (2, None, None, None, None, None)
    exotic = QueryResult(conn.sql(QUERIES["exotic"]).to_arrow()).fetchone()
    assert exotic is not None
    assert isinstance(exotic[0], pd.Timestamp)
    assert isinstance(exotic[3], decimal.Decimal)


def test_empty_keeps_schema(conn: Any) -> None:
    ours = QueryResult(conn.sql(QUERIES["empty"]).to_arrow())
    assert ours.fetchone() is None
    assert ours.fetchall() == [] == ours.fetchmany(5) == list(ours)
    assert ours.num_batches == 0
    assert ours.to_dicts() == {name: [] for name in ours.columns}
    assert [str(f.type) for f in ours.schema] == [
        "int64",
        "string",
        "double",
        "timestamp[us]",
        "bool",
        "date32[day]",
    ]
    assert list(ours.to_pandas().columns) == ours.columns


def test_from_batches_and_record_batch() -> None:
    schema = pa.schema([("x", pa.int64())])
    empty = QueryResult.from_batches([], schema)
    assert empty.schema.equals(schema) and empty.num_batches == 0
    batch = pa.record_batch({"x": [1, 2]})
    two = QueryResult.from_batches([batch, batch], schema)
    assert (two.num_batches, two.num_rows, two.fetchmany(3)) == (2, 4, [(1,), (2,), (1,)])
    assert QueryResult(batch).fetchall() == [(1,), (2,)]
    with pytest.raises(TypeError):
        QueryResult([(1,)])


STATEMENTS = [
    "CREATE SOURCE e1 (ts BIGINT, device VARCHAR)",
    "INSERT INTO e1 VALUES (1, 'a'), (2, 'b')",
    "SELECT * FROM e1",
    "SELECT * FROM e1 WHERE ts > 99",
    "SHOW SOURCES",
    "DESCRIBE e1",
    "EXPLAIN SELECT * FROM e1",
    "CREATE STREAM st AS SELECT * FROM e1",
    "CREATE SINK k FROM st",
    "CREATE MATERIALIZED VIEW mv AS SELECT device FROM e1",
    "CREATE VIEW v AS SELECT * FROM e1",
    "ALTER SOURCE e1 ADD COLUMN z INT",
    "DROP SINK k",
]


def _native_execute_results() -> list[tuple[str, Any]]:
    c = native.open(":memory:")
    return [(sql, c.execute(sql)) for sql in STATEMENTS]


@pytest.mark.parametrize(("sql", "theirs"), _native_execute_results(), ids=STATEMENTS)
def test_execute_result_matches_native(sql: str, theirs: Any) -> None:
    native_rows = theirs.to_query_result()
    rows = None if native_rows is None else QueryResult(native_rows.to_arrow())
    ours = ExecuteResult(
        theirs.result_type, theirs.rows_affected, theirs.ddl_type, theirs.ddl_object, rows
    )
    assert repr(ours) == repr(theirs)
    assert (int(ours), bool(ours)) == (int(theirs), bool(theirs))
    assert (ours.result_type, ours.rows_affected, ours.ddl_type, ours.ddl_object) == (
        theirs.result_type,
        theirs.rows_affected,
        theirs.ddl_type,
        theirs.ddl_object,
    )
    assert repr(ours.to_query_result()) == repr(native_rows)
    build: dict[str, Callable[[], ExecuteResult]] = {
        "ddl": lambda: ExecuteResult.ddl(theirs.ddl_type, theirs.ddl_object),
        "rows_affected": lambda: ExecuteResult.affected(theirs.rows_affected),
        "query": lambda: ExecuteResult.query(rows),  # type: ignore[arg-type]
        "metadata": lambda: ExecuteResult.metadata(rows),  # type: ignore[arg-type]
    }
    built = build[theirs.result_type]()
    assert repr(built) == repr(theirs)
    assert (built.rows_affected, int(built), bool(built)) == (
        theirs.rows_affected,
        int(theirs),
        bool(theirs),
    )


def test_execute_result_edges() -> None:
    assert not ExecuteResult.affected(0)
    assert ExecuteResult("query")
    assert repr(ExecuteResult("query")) == "ExecuteResult(query)"
    assert repr(ExecuteResult("metadata")) == "ExecuteResult(metadata)"
    assert repr(ExecuteResult("ddl")) == "ExecuteResult(ddl, ? ?)"
    with pytest.raises(ValueError):
        ExecuteResult("bogus")
    with pytest.raises(OverflowError):
        ExecuteResult("rows_affected", -1)


def test_checkpoint_result_matches_native(tmp_path: Path) -> None:
    c = native.open(
        "cp",
        config=native.LaminarConfig(storage_dir=str(tmp_path / "st"), checkpoint_interval_ms=1000),
    )
    c.execute("CREATE SOURCE cs (ts BIGINT)")
    c.start()
    c.insert("cs", {"ts": [1]})
    for _ in range(2):
        theirs = c.checkpoint()
        ours = CheckpointResult(theirs.checkpoint_id)
        assert repr(ours) == repr(theirs)
        assert (int(ours), bool(ours), ours.checkpoint_id) == (
            int(theirs),
            bool(theirs),
            theirs.checkpoint_id,
        )
    c.close()
    assert (
        bool(CheckpointResult(0))
        and repr(CheckpointResult(0)) == "CheckpointResult(checkpoint_id=0)"
    )


CONFIGS: list[dict[str, Any]] = [
    {},
    {"buffer_size": 10, "storage_dir": "st", "checkpoint_interval_ms": 1000},
    {"buffer_size": 0, "checkpoint_interval_ms": 0},
    {"buffer_size": True},
    {"buffer_size": 2**64 - 1},
    {"storage_dir": 'x"y\\z'},
    {"storage_dir": "tab\there\nnl\r\0nul"},
    {"storage_dir": "\x07\x1b\x7f\x85\xa0\xad\u200b\u2028\u3000\ufeff\ue000\U000e0001"},
    {"storage_dir": "a\u0301 \u0301 é 😀 ' quote"},
    {"storage_dir": "x\u20dd \u0488 \u0903 \u200c\u200d \U0001f3fb \u0378"},
    {"storage_dir": ""},
    {"buffer_size": -1},
    {"buffer_size": 2**64},
    {"buffer_size": "a"},
    {"buffer_size": 1.5},
    {"buffer_size": None},
    {"checkpoint_interval_ms": -5},
    {"checkpoint_interval_ms": 2**64},
    {"checkpoint_interval_ms": "1"},
    {"storage_dir": 3},
    {"storage_dir": Path("p")},
    {"storage_dir": "\ud800"},
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=[repr(k) for k in CONFIGS])
def test_config_matches_native(kwargs: dict[str, Any]) -> None:
    try:
        theirs = native.LaminarConfig(**kwargs)
    except Exception as native_err:
        with pytest.raises(type(native_err)) as our_err:
            LaminarConfig(**kwargs)
        assert type(our_err.value) is type(native_err)
        assert str(our_err.value) == str(native_err)
        return
    ours = LaminarConfig(**kwargs)
    assert repr(ours) == repr(theirs) == str(ours)
    assert (ours.buffer_size, ours.storage_dir, ours.checkpoint_interval_ms) == (
        theirs.buffer_size,
        theirs.storage_dir,
        theirs.checkpoint_interval_ms,
    )


def test_config_is_keyword_only_and_read_only() -> None:
    with pytest.raises(TypeError):
        LaminarConfig(1)  # type: ignore[call-arg]
    config = LaminarConfig()
    with pytest.raises(AttributeError):
        config.buffer_size = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.other = 3  # type: ignore[attr-defined]
