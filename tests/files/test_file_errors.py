"""Bad files: a clear error of the native class, nothing half-loaded, no /dev/shm leftovers,
and the cluster still usable afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from files_support import COLUMNS, SCHEMA, fresh, sample, shm_of_ours, write

from laminardb import IngestionError, QueryError, SchemaError
from laminardb.files import splits
from laminardb.files.options import resolve
from laminardb.files.read import read_split
from laminardb.wire.protocol import FileSplit

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def small_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "MIN_SPLIT_BYTES", 1)


@pytest.fixture
def keyed(db2: Any) -> str:
    """A keyed source already holding 10 rows."""
    name = fresh("bad")
    db2.execute(f"CREATE SOURCE {name} ({COLUMNS}) PARTITION BY (device)")
    db2.insert(name, sample(10))
    return name


def _unchanged(db: Any, name: str, tmp_path: Path) -> None:
    assert db.sql(f"SELECT count(*) FROM {name}").fetchall() == [(10,)]
    assert not shm_of_ours()
    assert db.load(name, write(sample(5), str(tmp_path / "ok.parquet"), "parquet")) == 5


def test_missing_path(db2: Any, keyed: str, tmp_path: Path) -> None:
    with pytest.raises(IngestionError, match=r"file not found.*nope\.csv"):
        db2.load(keyed, str(tmp_path / "nope.csv"))
    _unchanged(db2, keyed, tmp_path)


def test_glob_matching_nothing(db2: Any, keyed: str, tmp_path: Path) -> None:
    with pytest.raises(IngestionError, match=r"no file matches .*\*\.parquet"):
        db2.execute(f"COPY {keyed} FROM '{tmp_path}/*.parquet'")
    _unchanged(db2, keyed, tmp_path)


def test_unknown_format(db2: Any, keyed: str, tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_text("x")
    with pytest.raises(QueryError, match="cannot tell the format"):
        db2.load(keyed, str(path))
    with pytest.raises(QueryError, match="unknown file format 'xml'"):
        db2.load(keyed, str(path), format="xml")
    with pytest.raises(QueryError, match="unknown file option 'colour'"):
        db2.load(keyed, str(path), format="csv", colour="red")
    _unchanged(db2, keyed, tmp_path)


def test_a_folder_of_mixed_or_no_files(db2: Any, keyed: str, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write(sample(3), str(mixed / "a.csv"), "csv")
    write(sample(3), str(mixed / "b.parquet"), "parquet")
    with pytest.raises(QueryError, match=r"cannot tell the format of .*mixed.* files' extensions"):
        db2.load(keyed, str(mixed))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestionError, match=r"folder .*empty.* holds no file"):
        db2.load(keyed, str(empty))
    _unchanged(db2, keyed, tmp_path)


def test_unknown_source(db2: Any, tmp_path: Path) -> None:
    path = write(sample(3), str(tmp_path / "a.csv"), "csv")
    with pytest.raises(Exception, match="nosuch"):
        db2.load("nosuch", path)


def test_truncated_parquet(db2: Any, keyed: str, tmp_path: Path) -> None:
    good = write(sample(200), str(tmp_path / "a.parquet"), "parquet")
    data = Path(good).read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestionError, match=r"b\.parquet.*not a readable Parquet"):
        db2.load(keyed, str(tmp_path / "*.parquet"))
    _unchanged(db2, keyed, tmp_path)


def test_bad_csv_value_names_file_and_line(db2: Any, keyed: str, tmp_path: Path) -> None:
    rows = sample(400)
    path = write(rows, str(tmp_path / "a.csv"), "csv")
    lines = Path(path).read_text().splitlines(keepends=True)
    lines[350] = lines[350].replace(",", ",", 2).rsplit(",", 3)[0] + ",notanumber,1.0,true\n"
    Path(path).write_text("".join(lines))
    # the bad row is in the second worker's byte range; the first worker's part is aborted
    with pytest.raises(SchemaError, match=r"'notanumber' at line 351.*a\.csv"):
        db2.load(keyed, path)
    _unchanged(db2, keyed, tmp_path)


def test_a_decimal_that_needs_rounding_names_file_and_line(db2: Any, tmp_path: Path) -> None:
    name = fresh("money")
    db2.execute(f"CREATE SOURCE {name} (id BIGINT, price DECIMAL(10, 2), wait INTERVAL)")
    path = tmp_path / "prices.csv"
    path.write_text(
        "id,price,wait\n" + "".join(f"{i},{i}.25,\n" for i in range(300)) + "300,1.005,\n"
    )
    with pytest.raises(SchemaError, match=r"'price' .* '1\.005' at line 302: Rescaling.*prices"):
        db2.load(name, str(path))
    assert db2.sql(f"SELECT count(*) FROM {name}").fetchall() == [(0,)]
    path.write_text("id,price,wait\n1,1.25,\n")  # an empty INTERVAL field is NULL
    assert db2.load(name, str(path)) == 1


def test_bad_parquet_type_names_row_group(db2: Any, keyed: str, tmp_path: Path) -> None:
    rows = sample(100).set_column(2, "n", pa.array([7] * 99 + [2**63 + 5], pa.uint64()))
    path = write(rows, str(tmp_path / "t.parquet"), "parquet")
    with pytest.raises(SchemaError, match=r"at row 19.*t\.parquet', row group 4\)"):
        db2.load(keyed, path)
    _unchanged(db2, keyed, tmp_path)


def test_missing_column_and_malformed_json(db2: Any, keyed: str, tmp_path: Path) -> None:
    path = write(sample(20).drop_columns(["ok"]), str(tmp_path / "m.parquet"), "parquet")
    with pytest.raises(SchemaError, match="missing column 'ok'"):
        db2.load(keyed, path)
    bad = tmp_path / "j.ndjson"
    good = write(sample(50), str(tmp_path / "g.ndjson"), "json")
    text = Path(good).read_text().splitlines(keepends=True)
    text[40] = '{"ts": "2024-01-01 00:00:00", "device": \n'
    bad.write_text("".join(text))
    with pytest.raises(IngestionError, match=r"invalid JSON at line 41.*j\.ndjson"):
        db2.load(keyed, str(bad))
    _unchanged(db2, keyed, tmp_path)


def test_bad_copy_syntax(db2: Any, keyed: str) -> None:
    with pytest.raises(QueryError, match="expected FROM or TO"):
        db2.execute(f"COPY {keyed} INTO 'x.csv'")
    with pytest.raises(QueryError, match="quoted path"):
        db2.execute(f"COPY {keyed} FROM x")


@pytest.mark.parametrize("threads", [True, False])
def test_bad_csv_value_located_either_reader(threads: bool, tmp_path: Path) -> None:
    """Threaded and single-threaded CSV parsing word their errors differently; both name
    the column's value and its line (a worker parses single-threaded when its load has
    as many workers as there are cores)."""
    path = write(sample(300), str(tmp_path / "b.csv"), "csv")
    lines = Path(path).read_text().splitlines(keepends=True)
    lines[200] = lines[200].rsplit(",", 3)[0] + ",notanumber,1.0,true\n"
    Path(path).write_text("".join(lines))
    opts = resolve(path, None, {})
    good = read_split(FileSplit(path, 0, len(lines[0])), opts, SCHEMA, "t", threads)
    assert good.num_rows == 0
    with pytest.raises(SchemaError, match=r"'notanumber' at line 201.*b\.csv"):
        read_split(FileSplit(path), opts, SCHEMA, "t", threads)
