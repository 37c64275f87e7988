"""Parquet splits decoded by polars (laminardb/files/polars_read.py) are exactly what pyarrow
reads, types, nullability and metadata included; files it does not take, and any failure,
go to pyarrow, whose errors name the row group. Then a worker's later loads use it."""

from __future__ import annotations

import collections
import datetime as dt
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars  # imported, as a worker's idle preloader imports it
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laminardb
from benchmarks.batch_job import parquet_reader
from laminardb import SchemaError
from laminardb.files import polars_read
from laminardb.files.options import resolve
from laminardb.files.read import read_split
from laminardb.wire.protocol import FileSplit

pytestmark = pytest.mark.timeout(60)

ROWS = 40
UTC = dt.UTC


def _column(kind: pa.DataType, value: Any) -> pa.Array:
    """ROWS values of `kind`: `value(i)`, with every fifth a NULL."""
    return pa.array([None if i % 5 == 3 else value(i) for i in range(ROWS)], kind)


WIDE = pa.table(
    {
        "i8": _column(pa.int8(), lambda i: i - 20),
        "i16": _column(pa.int16(), lambda i: -(i**3) // 2),
        "i32": _column(pa.int32(), lambda i: i * 1_000_003),
        "i64": _column(pa.int64(), lambda i: -(2**62) + i),
        "u8": _column(pa.uint8(), lambda i: 255 - i),
        "u64": _column(pa.uint64(), lambda i: 2**64 - 1 - i),
        "f32": _column(pa.float32(), lambda i: i / 3),
        "f64": _column(pa.float64(), lambda i: [math.nan, -0.0, math.inf, -math.inf, 1e308][i % 5]),
        "b": _column(pa.bool_(), lambda i: i % 2 == 0),
        "s": _column(pa.string(), lambda i: ["", "é", "naïve ☃", "x" * 50, "a"][i % 5]),
        "ls": _column(pa.large_string(), lambda i: f"row {i}"),
        "bin": _column(pa.binary(), lambda i: bytes([i, 0, 255])),
        "d": _column(pa.date32(), lambda i: dt.date(1969, 12, 31) + dt.timedelta(days=i * 400)),
        "ts_s": _column(pa.timestamp("s"), lambda i: dt.datetime(2001, 1, 1, 0, 0, i)),
        "ts_ms": _column(pa.timestamp("ms", tz="UTC"), lambda i: dt.datetime(1960, 1, 1, tzinfo=UTC)),
        "ts_us": _column(pa.timestamp("us", tz="Europe/Paris"), lambda i: dt.datetime(2024, 3, 31, 1, i, tzinfo=UTC)),
        "ts_ns": _column(pa.timestamp("ns"), lambda i: dt.datetime(2262, 1, 1) - dt.timedelta(days=i)),
    }
)  # fmt: skip
"""Every type polars_read takes, NULLs, NaN, -0.0, infinities, non-ASCII text, times
before 1970 and near the end of nanosecond range, time zones."""


def _write(path: Path, table: pa.Table, **options: Any) -> str:
    pq.write_table(table, str(path), row_group_size=10, **options)
    return str(path)


def _assert_same(found: pa.Table, expected: pa.Table) -> None:
    """Same schema (metadata included) and the same values in the same order, compared by
    repr: NaN equals NaN, -0.0 differs from 0.0."""
    assert found.schema.equals(expected.schema, check_metadata=True)
    for name in expected.column_names:
        assert repr(found.column(name).to_pylist()) == repr(expected.column(name).to_pylist())


def _by_pyarrow(path: str, groups: list[int]) -> pa.Table:
    f = pq.ParquetFile(path)
    return pa.concat_tables([f.read_row_group(g) for g in groups])


@pytest.mark.parametrize("groups", [[0], [1, 2], [3], [0, 1, 2, 3]], ids=str)
def test_rows_types_and_metadata_are_pyarrows(tmp_path: Path, groups: list[int]) -> None:
    path = _write(tmp_path / "wide.parquet", WIDE)
    found = polars_read.read_row_groups(pq.ParquetFile(path), path, groups)
    assert found is not None, "the file qualifies: polars must have read it"
    expected = _by_pyarrow(path, groups)
    _assert_same(found, expected)
    assert found.num_rows == 10 * len(groups)


def test_a_required_column_stays_required(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("k", pa.int64(), nullable=False), ("v", pa.string())])
    path = _write(tmp_path / "req.parquet", pa.table({"k": range(30), "v": ["a"] * 30}, schema))
    found = polars_read.read_row_groups(pq.ParquetFile(path), path, [1, 2])
    assert found is not None
    assert found.schema.equals(_by_pyarrow(path, [1, 2]).schema, check_metadata=True)
    assert not found.schema.field("k").nullable


@pytest.mark.parametrize(
    ("column", "options"),
    [
        (pa.array([1, 2], pa.decimal128(10, 2)), {}),
        (pa.array([[1], [2, 3]], pa.list_(pa.int64())), {}),
        (pa.array(["a", "b"]).dictionary_encode(), {}),
        (pa.array([1.5, 2.5], pa.float16()), {}),
        (pa.array([dt.datetime(2020, 1, 1)] * 2, pa.timestamp("ns")), {"use_deprecated_int96_timestamps": True}),
        (pa.array([dt.time(1, 2)] * 2, pa.time64("us")), {}),
    ],
    ids=["decimal", "list", "dictionary", "float16", "int96", "time"],
)  # fmt: skip
def test_other_files_go_to_pyarrow(tmp_path: Path, column: pa.Array, options: Any) -> None:
    path = _write(tmp_path / "other.parquet", pa.table({"k": [1, 2], "x": column}), **options)
    assert not polars_read.qualifies(pq.ParquetFile(path))
    assert polars_read.read_row_groups(pq.ParquetFile(path), path, [0]) is None


def test_large_footers_gaps_a_missing_import_and_the_users_choice_go_to_pyarrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "wide.parquet", WIDE)
    f = pq.ParquetFile(path)
    assert polars_read.read_row_groups(f, path, [0, 2]) is None  # not consecutive
    monkeypatch.setattr(polars_read, "MAX_FOOTER_BYTES", f.metadata.serialized_size - 1)
    assert polars_read.read_row_groups(f, path, [0]) is None
    monkeypatch.undo()
    monkeypatch.setenv(polars_read.READER_ENV, "pyarrow")  # the user's choice
    assert polars_read.read_row_groups(f, path, [0]) is None
    monkeypatch.undo()
    assert polars_read.read_row_groups(f, path, [0]) is not None
    monkeypatch.setitem(sys.modules, "polars", None)  # not imported (yet)
    assert polars_read.read_row_groups(f, path, [0]) is None


def test_a_polars_panic_goes_to_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """polars reports a Rust panic as `PanicException`, a BaseException: caught too, or
    a malformed file would end the worker's request loop."""
    path = _write(tmp_path / "wide.parquet", WIDE)

    def panic(*args: Any, **kwargs: Any) -> None:
        raise polars.exceptions.PanicException("index out of bounds")

    monkeypatch.setattr(polars, "scan_parquet", panic)
    assert polars_read.read_row_groups(pq.ParquetFile(path), path, [0]) is None


def test_damaged_files_read_as_pyarrow_reads_them_or_not_at_all(tmp_path: Path) -> None:
    """Bytes overwritten in the data pages (the footer intact): where pyarrow fails, polars
    must fail too (the load then reports pyarrow's error); where both read, the same rows.
    Neither checks page checksums, so both may read damaged values alike."""
    rows = 20_000
    table = pa.table({"a": range(rows), "s": [f"x{i % 97}" for i in range(rows)]})
    good = tmp_path / "good.parquet"
    pq.write_table(table, str(good), row_group_size=5_000)
    data = good.read_bytes()
    rng = random.Random(7)
    outcomes = collections.Counter()
    for trial in range(60):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 12)):
            damaged[rng.randrange(4, len(data) - 1_000)] = rng.randrange(256)
        path = tmp_path / f"damaged{trial}.parquet"
        path.write_bytes(bytes(damaged))
        try:
            f = pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError, EOFError, ValueError):
            continue  # a damaged footer: the load fails before any split is read
        try:
            expected = _by_pyarrow(str(path), [1, 2])
        except (pa.ArrowException, OSError, EOFError, ValueError):
            expected = None
        found = polars_read.read_row_groups(f, str(path), [1, 2])
        if expected is None:
            assert found is None, f"trial {trial}: polars read what pyarrow could not"
        elif found is not None:
            assert found.equals(expected), f"trial {trial}: the readers disagree"
        outcomes[(expected is None, found is None)] += 1
    assert outcomes[(True, True)] and outcomes[(False, False)], outcomes  # both kinds seen


@pytest.mark.parametrize("name", ["k=1/part[0].parquet", "a*b?.parquet"])
def test_paths_are_taken_literally(tmp_path: Path, name: str) -> None:
    """No glob expansion, no columns made of hive-style folder names."""
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    _write(path, pa.table({"v": range(25)}))
    _write(tmp_path / "k=1" / "part0.parquet" if "[" in name else tmp_path / "axbc.parquet",
           pa.table({"v": range(100, 125)}))  # fmt: skip
    found = polars_read.read_row_groups(pq.ParquetFile(str(path)), str(path), [1, 2])
    assert found is not None
    assert found.column_names == ["v"] and found.column("v").to_pylist() == list(range(10, 25))


def test_a_bad_value_is_still_named_by_row_group(tmp_path: Path) -> None:
    """The cast to the source fails on the polars table: pyarrow reads the split again,
    one row group at a time, and names the one with the bad value."""
    values = [float(i) for i in range(30)]
    values[25] = 2.5  # row group 2: not a BIGINT
    path = _write(tmp_path / "bad.parquet", pa.table({"v": values}))
    schema = pa.schema([("v", pa.int64())])
    split = FileSplit(path, row_groups=[0, 1, 2])
    with pytest.raises(SchemaError, match=r"row group 2"):
        read_split(split, resolve(path, None, {}), schema, "t")
    good = read_split(FileSplit(path, row_groups=[0, 1]), resolve(path, None, {}), schema, "t")
    assert good.column("v").to_pylist() == list(range(20))


@pytest.fixture
def fresh() -> Iterator[Any]:
    conn = laminardb.open(":memory:", workers=2)
    yield conn
    conn.close()


def test_workers_read_with_polars_after_their_first_parquet_load(
    tmp_path: Path, fresh: Any
) -> None:
    path = _write(tmp_path / "some.parquet", WIDE.select(["i64", "s", "f64", "ts_s"]))
    columns = "i64 BIGINT, s VARCHAR, f64 DOUBLE, ts_s TIMESTAMP"
    fresh.execute(f"CREATE SOURCE first ({columns})")
    fresh.execute(f"CREATE SOURCE later ({columns})")
    assert parquet_reader(fresh, deadline_s=0) == "pyarrow"  # asked once, not waited for
    fresh.load("first", path)
    assert parquet_reader(fresh) == "polars"  # imported in the background once idle
    fresh.load("later", path)
    first, later = (fresh.sql(f"SELECT * FROM {name}").to_arrow() for name in ("first", "later"))
    assert later.schema == first.schema
    assert _rows(later) == _rows(first) and len(_rows(first)) == ROWS


def _rows(table: pa.Table) -> list[str]:
    """The rows as a sorted list of reprs (NaN equals NaN, -0.0 differs from 0.0)."""
    return sorted(map(repr, zip(*(c.to_pylist() for c in table.columns), strict=True)))


_KINDS: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int8(), st.integers(-(2**7), 2**7 - 1)),
    (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.uint16(), st.integers(0, 2**16 - 1)),
    (pa.uint64(), st.integers(0, 2**64 - 1)),
    (pa.float32(), st.floats(width=32)),
    (pa.float64(), st.floats()),
    (pa.bool_(), st.booleans()),
    (pa.string(), st.text(max_size=20)),
    (pa.large_string(), st.text(max_size=5)),
    (pa.binary(), st.binary(max_size=10)),
    (pa.date32(), st.dates()),
    (pa.timestamp("ms"), st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31))),
    (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(UTC))),
    (pa.timestamp("ns"), st.datetimes(dt.datetime(1678, 1, 1), dt.datetime(2262, 4, 11))),
]


@st.composite
def _files(draw: st.DrawFn) -> tuple[pa.Table, int, list[int]]:
    """A table of 1-4 columns of the types polars_read takes, the file's row group size, and
    a run of consecutive row groups to read."""
    kinds = draw(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=4))
    rows = draw(st.integers(1, 30))
    columns = {
        f"c{i}": pa.array(draw(st.lists(st.none() | values, min_size=rows, max_size=rows)), kind)
        for i, (kind, values) in enumerate(kinds)
    }
    size = draw(st.integers(1, 12))
    groups = -(-rows // size)
    first = draw(st.integers(0, groups - 1))
    last = draw(st.integers(first, groups - 1))
    return pa.table(columns), size, list(range(first, last + 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_files())
def test_random_files_read_as_pyarrow_reads_them(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[pa.Table, int, list[int]]
) -> None:
    table, size, groups = case
    path = str(tmp_path_factory.mktemp("random") / "f.parquet")
    pq.write_table(table, path, row_group_size=size)
    f = pq.ParquetFile(path)
    found = polars_read.read_row_groups(f, path, groups)
    assert found is not None, f"polars declined {table.schema}"
    expected = _by_pyarrow(path, groups)
    _assert_same(found, expected)
