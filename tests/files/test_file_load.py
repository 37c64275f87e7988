"""`load()` and `COPY ... FROM`: every format into keyed and unkeyed sources on 1-3 workers,
compared with one native instance fed the same rows as Arrow through `insert`."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from files_support import COLUMNS, EXT, fresh, native_rows, sample, shm_of_ours, write

from laminardb.files import splits
from laminardb.ingest import partition

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def small_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut even small test files into several byte ranges (one per worker)."""
    monkeypatch.setattr(splits, "MIN_SPLIT_BYTES", 1)


def _create(conn: Any, keyed: bool) -> tuple[str, str]:
    name = fresh("ld")
    ddl = f"CREATE SOURCE {name} ({COLUMNS})"
    conn.execute(ddl + (" PARTITION BY (device)" if keyed else ""))
    return name, ddl


@pytest.mark.parametrize("keyed", [False, True], ids=["spread", "keyed"])
@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_load_matches_native(cluster: Any, tmp_path: Path, fmt: str, keyed: bool) -> None:
    data = [sample(700, seed=0), sample(500, seed=1000)]
    for i, part in enumerate(data):
        write(part, str(tmp_path / f"part{i}.{EXT[fmt]}"), fmt)
    name, ddl = _create(cluster, keyed)
    before = [w.rows_ingested for w in cluster.workers()]
    assert cluster.load(name, str(tmp_path / f"part*.{EXT[fmt]}")) == 1200
    import pyarrow as pa

    everything = pa.concat_tables(data)
    sql = f"SELECT * FROM {name}"
    assert Counter(cluster.sql(sql).fetchall()) == Counter(native_rows(ddl, name, everything, sql))
    agg = f"SELECT device, count(*), sum(n), min(ts) FROM {name} GROUP BY device"
    assert Counter(cluster.sql(agg).fetchall()) == Counter(native_rows(ddl, name, everything, agg))
    placed = [w.rows_ingested - b for w, b in zip(cluster.workers(), before, strict=True)]
    assert sum(placed) == 1200
    if keyed:  # each row sits on the worker that owns its key, as insert() would put it
        owners = partition.vshards(everything, ["device"]) % np.uint16(len(placed))
        assert placed == [int((owners == w).sum()) for w in range(len(placed))]
    assert not shm_of_ours()


def test_csv_options_and_compression(db2: Any, tmp_path: Path) -> None:
    data = sample(300)
    plain = tmp_path / "rows.txt"
    import pyarrow.csv as pacsv

    pacsv.write_csv(data, plain, pacsv.WriteOptions(include_header=False, delimiter="|"))
    name, ddl = _create(db2, keyed=True)
    sql = f"COPY {name} FROM '{plain}' WITH (FORMAT csv, HEADER false, DELIMITER '|')"
    assert db2.execute(sql).rows_affected == 300
    import gzip

    zipped = tmp_path / "rows.csv.gz"
    with open(write(data, str(tmp_path / "rows.csv"), "csv"), "rb") as f:
        zipped.write_bytes(gzip.compress(f.read()))
    assert db2.load(name, str(zipped)) == 300
    import pyarrow as pa

    everything = pa.concat_tables([data, data])
    query = f"SELECT * FROM {name}"
    assert Counter(db2.sql(query).fetchall()) == Counter(native_rows(ddl, name, everything, query))


def test_load_after_inserts_keeps_both(db2: Any, tmp_path: Path) -> None:
    name, _ = _create(db2, keyed=False)
    db2.insert(name, sample(10))
    db2.load(name, write(sample(40), str(tmp_path / "x.parquet"), "parquet"))
    assert db2.sql(f"SELECT count(*) FROM {name}").fetchall() == [(50,)]
    assert db2.sql(f"COPY {name} FROM '{tmp_path}/x.parquet'").fetchall() == [(40,)]
    assert db2.sql(f"SELECT count(*) FROM {name}").fetchall() == [(90,)]


def test_a_folder_or_glob_takes_the_format_its_files_share(db2: Any, tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "export"
    folder.mkdir()
    for i in range(3):
        plain = write(sample(20, seed=i), str(folder / f"part-{i}.csv"), "csv")
        if i:  # compressed or not, each is a CSV file
            with open(plain, "rb") as f:
                Path(plain + ".gz").write_bytes(gzip.compress(f.read()))
            Path(plain).unlink()
    (folder / "_SUCCESS").write_text("")  # a part folder's marker: not a file of the load
    name, _ = _create(db2, keyed=True)
    assert db2.load(name, str(folder)) == 60
    assert db2.execute(f"COPY {name} FROM '{folder}/part-*'").rows_affected == 60
    assert db2.sql(f"SELECT count(*) FROM {name}").fetchall() == [(120,)]


def test_a_relative_path_is_the_callers_not_the_workers(
    db2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    write(sample(30), str(tmp_path / "in" / "rows.csv"), "csv")
    monkeypatch.chdir(tmp_path)  # the workers were started elsewhere
    name, _ = _create(db2, keyed=True)
    assert db2.load(name, "in/rows.csv") == 30
    monkeypatch.chdir(tmp_path / "in")
    assert db2.execute(f"COPY {name} FROM 'rows.csv'").rows_affected == 30
    assert db2.execute(f"COPY {name} TO 'parts/'").rows_affected == 60
    assert sorted(p.name for p in (tmp_path / "in" / "parts").iterdir()) == [
        "part-0.parquet",
        "part-1.parquet",
    ]


def test_persistent_connection_keeps_loaded_rows(tmp_path: Path) -> None:
    import laminardb

    path = write(sample(100), str(tmp_path / "in.csv"), "csv")
    db = tmp_path / "db"
    with laminardb.open(str(db), workers=2) as conn:
        conn.execute(f"CREATE SOURCE p ({COLUMNS}) PARTITION BY (device)")
        assert conn.load("p", path) == 100
    with laminardb.open(str(db), workers=2) as conn:
        assert conn.sql("SELECT count(*) FROM p").fetchall() == [(100,)]


def test_json_array_and_zstd(db2: Any, tmp_path: Path) -> None:
    import json

    import pyarrow as pa

    data = sample(120)
    rows = data.to_pylist()
    for row in rows:
        row["ts"] = row["ts"].isoformat(sep=" ")
    (tmp_path / "a.json").write_text(json.dumps(rows[:60]))
    with pa.output_stream(str(tmp_path / "b.ndjson.zst"), compression="zstd") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[60:]).encode())
    name, ddl = _create(db2, keyed=True)
    assert db2.load(name, str(tmp_path / "a.json")) == 60
    assert db2.load(name, str(tmp_path / "b.ndjson.zst")) == 60
    sql = f"SELECT * FROM {name}"
    assert Counter(db2.sql(sql).fetchall()) == Counter(native_rows(ddl, name, data, sql))


def test_by_owner_cuts_like_partition_split() -> None:
    import pyarrow as pa

    from workers.files import by_owner

    data = pa.concat_tables([sample(300), sample(200, seed=5)])  # several chunks
    for n in (1, 2, 3):
        ours = by_owner(data, ["device"], n)
        theirs = partition.split(data, ["device"], n)
        assert [t.to_pylist() for t in ours] == [t.to_pylist() for t in theirs]
        # each part in buffers of its own: the part a worker keeps holds no other owner's rows
        held = sum(t.get_total_buffer_size() for t in ours)
        assert held <= 1.1 * data.combine_chunks().get_total_buffer_size()


def test_a_worker_with_several_cores_gets_several_line_aligned_pieces(tmp_path: Path) -> None:
    from laminardb.files.options import FileOptions

    path = write(sample(600), str(tmp_path / "rows.csv"), "csv")
    shares = splits.plan([path], FileOptions("csv", True, ","), 2, "t", per_worker=3)
    assert [len(share) for share in shares] == [3, 3]
    pieces = sorted((s.start, s.end) for share in shares for s in share)
    data = Path(path).read_bytes()
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert all(data[end - 1 : end] == b"\n" for _, end in pieces)


def test_threaded_cut_gives_the_same_parts_in_input_order(monkeypatch: Any) -> None:
    import pyarrow as pa

    from workers import files

    monkeypatch.setattr(files, "MIN_RANGE_ROWS", 40)  # several ranges of a small table
    data = pa.concat_tables([sample(300), sample(200, seed=5)])
    for n in (2, 3):
        serial = files.by_owner(data, ["device"], n)
        threaded = files.by_owner_parallel(data, ["device"], n, cores=4)
        assert max(t.column(0).num_chunks for t in threaded) > 1  # the ranges were cut
        assert [t.to_pylist() for t in threaded] == [t.to_pylist() for t in serial]


def test_csv_quoted_line_breaks_are_not_cut(cluster: Any, tmp_path: Path) -> None:
    import pyarrow as pa

    data = sample(400)
    notes = [f'line {i}\nnext, "quoted"\n' if i % 3 == 0 else f"plain {i}" for i in range(400)]
    data = data.set_column(1, "device", pa.array(notes))
    path = write(data, str(tmp_path / "multi.csv"), "csv")
    name, ddl = _create(cluster, keyed=True)
    assert cluster.load(name, path) == 400
    sql = f"SELECT * FROM {name}"
    assert Counter(cluster.sql(sql).fetchall()) == Counter(native_rows(ddl, name, data, sql))


def test_exchanged_rows_of_every_width_reach_the_engine(db2: Any, tmp_path: Path) -> None:
    """One Parquet row group: worker 0 reads it all and worker 1 commits only the segment it
    was sent (taken from the mapping, not copied); the answer is native's."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 5000
    data = pa.table(
        {
            "k": pa.array([f"k{i % 97}" for i in range(rows)]),
            "d": pa.array([decimal.Decimal(i) / 100 for i in range(rows)], pa.decimal128(12, 2)),
            "n": pa.array(range(rows), pa.int64()),
            "v": pa.array([i / 7 for i in range(rows)], pa.float64()),
            "b": pa.array([i % 3 == 0 for i in range(rows)]),
        }
    )
    path = str(tmp_path / "one.parquet")
    pq.write_table(data, path, row_group_size=rows)
    name = fresh("wide")
    ddl = f"CREATE SOURCE {name} (k VARCHAR, d DECIMAL(12,2), n BIGINT, v DOUBLE, b BOOLEAN)"
    db2.execute(ddl + " PARTITION BY (k)")
    assert db2.load(name, path) == rows
    for sql in (
        f"SELECT * FROM {name}",
        f"SELECT k, sum(d), sum(n), count(*) FROM {name} GROUP BY k",
    ):
        assert Counter(db2.sql(sql).fetchall()) == Counter(native_rows(ddl, name, data, sql))
    assert not shm_of_ours()


def test_mapped_segment_keeps_wide_values_aligned(tmp_path: Path) -> None:
    """A segment is read from its mapping without a copy, but the IPC stream aligns buffers
    to 8 bytes only: a decimal column (16-byte values, which the engine's Arrow import
    rejects with a panic when misaligned) must come back 16-byte aligned."""
    import os

    import pyarrow as pa

    from laminardb.wire import protocol
    from laminardb.wire.arena import PREFIX, SHM_DIR
    from workers import files

    rows = 4  # with these sizes the decimals start 8 bytes off a 16-byte boundary (checked)
    table = pa.table(
        {
            "n": pa.array(range(rows), pa.int64()),
            "d": pa.array(range(rows), pa.decimal128(12, 2)),
        }
    )
    name = f"{PREFIX}{os.getpid()}-test-wide"
    files._write_segment(name, table)
    staged: files.Staged = {}
    assert files.stage_segments(protocol.StageSegments(1, 7, "s", [name]), staged) == rows
    ((_, got),) = staged[7]
    assert got.equals(table)
    assert all(b.address % 16 == 0 for b in got.column("d").chunk(0).buffers() if b is not None)
    assert not os.path.exists(os.path.join(SHM_DIR, name))
