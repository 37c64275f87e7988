"""`COPY ... TO` and `QueryResult.write_*`: what is written is exactly the query's answer."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from files_support import COLUMNS, SCHEMA, fresh, native_rows, sample

from laminardb import QueryError
from laminardb.files.write import EXTENSIONS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def source(db2: Any) -> str:
    name = fresh("out")
    db2.execute(f"CREATE SOURCE {name} ({COLUMNS}) PARTITION BY (device)")
    db2.insert(name, sample(500))
    return name


def _bag(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(zip(*(c.to_pylist() for c in table.columns), strict=True))


def test_copy_query_to_each_format(db2: Any, source: str, tmp_path: Path) -> None:
    query = f"SELECT device, count(*) AS c, sum(n) AS s FROM {source} GROUP BY device"
    expected = db2.sql(query).to_arrow()
    out = tmp_path / "agg.parquet"
    assert db2.execute(f"COPY ({query}) TO '{out}'").rows_affected == expected.num_rows
    assert _bag(pq.read_table(out)) == _bag(expected)
    assert pq.read_table(out).schema == expected.schema
    csv_out = tmp_path / "agg.csv"
    db2.execute(f"COPY ({query}) TO '{csv_out}' WITH (FORMAT csv, HEADER true)")
    opts = pacsv.ConvertOptions(column_types=expected.schema, strings_can_be_null=True)
    assert _bag(pacsv.read_csv(csv_out, convert_options=opts)) == _bag(expected)
    json_out = tmp_path / "agg.json"
    assert db2.sql(f"COPY ({query}) TO '{json_out}' (FORMAT json)").fetchall() == [
        (expected.num_rows,)
    ]
    rows = [json.loads(line) for line in json_out.read_text().splitlines()]
    assert Counter(tuple(r.values()) for r in rows) == _bag(expected)


def test_copy_table_round_trip(db2: Any, source: str, tmp_path: Path) -> None:
    out = tmp_path / "all.csv.gz"
    assert db2.execute(f"COPY {source} TO '{out}'").rows_affected == 500
    back = fresh("back")
    db2.execute(f"CREATE SOURCE {back} ({COLUMNS})")
    assert db2.execute(f"COPY {back} FROM '{out}'").rows_affected == 500
    assert _bag(db2.sql(f"SELECT * FROM {back}").to_arrow()) == _bag(sample(500))


def test_folder_of_parts(db2: Any, source: str, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    query = f"SELECT device, n FROM {source} WHERE n > 100"
    expected = db2.sql(query).to_arrow()
    written = db2.execute(f"COPY ({query}) TO '{folder}/'").rows_affected
    assert written == expected.num_rows
    parts = sorted(p.name for p in folder.iterdir())
    assert parts == ["part-0.parquet", "part-1.parquet"]  # one per worker
    assert _bag(pq.read_table(folder)) == _bag(expected)
    back = f"{source}_back"  # the folder loads back as it is (its files' format)
    db2.execute(f"CREATE SOURCE {back} (device VARCHAR, n BIGINT)")
    assert db2.load(back, str(folder)) == expected.num_rows
    assert _bag(db2.sql(f"SELECT * FROM {back}").to_arrow()) == _bag(expected)
    ordered = tmp_path / "sorted"
    db2.execute(f"COPY ({query} ORDER BY n LIMIT 1000) TO '{ordered}/'")
    assert [p.name for p in ordered.iterdir()] == ["part-0.parquet"]  # one exact answer
    assert pq.read_table(ordered).column("n").to_pylist() == sorted(
        expected.column("n").to_pylist()
    )


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_decimals_round_trip_digit_for_digit(db2: Any, fmt: str, tmp_path: Path) -> None:
    name = f"dec_{fmt}"
    db2.execute(f"CREATE SOURCE {name} (id BIGINT, x DECIMAL(38, 2)) PARTITION BY (id)")
    values = [Decimal("123456789012345678901.23"), Decimal("-0.05"), None, Decimal("7.00")]
    db2.insert(
        name,
        pa.table(
            {"id": pa.array(range(4), pa.int64()), "x": pa.array(values, pa.decimal128(38, 2))}
        ),
    )
    db2.execute(f"COPY {name} TO '{tmp_path}/out.{fmt}'")
    db2.execute(f"CREATE SOURCE {name}_back (id BIGINT, x DECIMAL(38, 2))")
    assert db2.load(f"{name}_back", str(tmp_path / f"out.{fmt}")) == 4
    assert _bag(db2.sql(f"SELECT * FROM {name}_back").to_arrow()) == _bag(
        db2.sql(f"SELECT * FROM {name}").to_arrow()
    )


def test_nested_decimals_are_written_as_json_numbers(db2: Any, tmp_path: Path) -> None:
    db2.execute("CREATE SOURCE dec_nested (id BIGINT, x DECIMAL(38, 2)) PARTITION BY (id)")
    db2.insert("dec_nested", [{"id": 1, "x": Decimal("123456789012345678901.23")}])
    db2.execute(
        f"COPY (SELECT id, x, array_agg(x) AS xs FROM dec_nested GROUP BY id, x) "
        f"TO '{tmp_path}/out.json'"
    )
    row = json.loads((tmp_path / "out.json").read_text(), parse_float=Decimal)
    assert row["x"] == Decimal("123456789012345678901.23")
    assert row["xs"] == [Decimal("123456789012345678901.23")]  # a number, not the text


def test_query_result_writers(db2: Any, source: str, tmp_path: Path) -> None:
    result = db2.sql(f"SELECT * FROM {source}")
    assert result.write_parquet(str(tmp_path / "r.parquet")) == 500
    assert _bag(pq.read_table(tmp_path / "r.parquet")) == _bag(sample(500))
    assert result.write_csv(str(tmp_path / "r.csv")) == 500
    back = pacsv.read_csv(
        tmp_path / "r.csv",
        convert_options=pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True),
    )
    assert _bag(back) == _bag(sample(500))


def test_unwritable_path(db2: Any, source: str, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="cannot write"):
        db2.execute(f"COPY {source} TO '{tmp_path}/missing/dir/x.parquet'")


def test_workers_write_their_parts_in_each_format(db2: Any, source: str, tmp_path: Path) -> None:
    """Each worker writes its own part (WriteQuery); the parts together are the exact answer,
    the same rows one native instance answers."""
    query = f"SELECT device, n, n * 2 AS twice FROM {source} WHERE n % 3 = 0"
    expected = native_rows(f"CREATE SOURCE {source} ({COLUMNS})", source, sample(500), query)
    nullable = pacsv.ConvertOptions(strings_can_be_null=True)
    for fmt, read in (
        ("csv", lambda p: pacsv.read_csv(p, convert_options=nullable).to_pylist()),
        ("json", lambda p: [json.loads(line) for line in p.read_text().splitlines()]),
        ("parquet", lambda p: pq.read_table(p).to_pylist()),
    ):
        folder = tmp_path / fmt
        written = db2.execute(f"COPY ({query}) TO '{folder}/' (FORMAT {fmt})").rows_affected
        assert written == len(expected)
        files = sorted(folder.iterdir())
        assert [p.name for p in files] == [f"part-{i}.{EXTENSIONS[fmt]}" for i in range(2)]
        rows = [tuple(r.values()) for p in files for r in read(p)]
        assert Counter(rows) == Counter(expected), fmt


def test_failed_part_leaves_no_parts(db2: Any, source: str, tmp_path: Path) -> None:
    """One worker cannot write its part: a QueryError naming it, and no part file is left."""
    folder = tmp_path / "half"
    (folder / "part-1.parquet").mkdir(parents=True)  # worker 1's file cannot be created
    with pytest.raises(QueryError, match=r"cannot write.*part-1\.parquet"):
        db2.execute(f"COPY (SELECT * FROM {source}) TO '{folder}/'")
    assert not (folder / "part-0.parquet").exists()
    assert db2.execute(f"COPY (SELECT * FROM {source}) TO '{tmp_path}/ok/'").rows_affected == 500
