"""The worker's side of a load without processes: its splits (a Parquet row group, a text
piece) are read, cut by owner and written on threads at once; the rows, their owners,
the progress, the first error and the segments come out as if read one after another."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from files_support import SCHEMA, sample, shm_of_ours, write

from laminardb import SchemaError
from laminardb.files import splits
from laminardb.files.options import resolve
from laminardb.files.read import read_split
from laminardb.wire.arena import SHM_DIR
from laminardb.wire.protocol import FileSplit, ReadFiles
from workers import files

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def four_cores() -> Iterator[None]:
    """Arrow's thread pool as a worker with 4 cores sizes it (restored afterwards)."""
    before = pa.cpu_count()
    pa.set_cpu_count(4)
    yield
    pa.set_cpu_count(before)


def _request(path: str, splits: list[FileSplit], txn: int, workers: int = 3) -> ReadFiles:
    opts = resolve(path, None, {})
    return ReadFiles(
        1, txn, "t", SCHEMA.serialize().to_pybytes(), ["device"], workers,
        f"laminardb-{os.getpid()}-loadtest-", opts.format, opts.to_wire(), splits,
    )  # fmt: skip


def _placed(reply: dict[str, Any], staged: files.Staged, txn: int, workers: int) -> list[pa.Table]:
    """The rows each owner gets (staged here for shard 0, segments for the others), in the
    order the owner stages them; the segments are unlinked."""
    parts: list[list[pa.Table]] = [[] for _ in range(workers)]
    parts[0] = [table for _, table in staged.pop(txn, [])]
    for dest, name in reply["segments"]:
        with pa.memory_map(os.path.join(SHM_DIR, name)) as mapped:
            parts[dest].append(pa.ipc.open_stream(mapped).read_all())
        os.unlink(os.path.join(SHM_DIR, name))
    return [pa.concat_tables(p).combine_chunks() if p else SCHEMA.empty_table() for p in parts]


def _row_groups(path: str) -> list[FileSplit]:
    """A split per row group of the Parquet file `path`, as the coordinator plans them."""
    return [FileSplit(path, row_groups=[g]) for g in range(pq.ParquetFile(path).num_row_groups)]


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in ("ts", "n", "value")])


@pytest.mark.parametrize("segment_rows", [1 << 30, 8])
def test_row_groups_read_at_once_place_rows_as_one_pass_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_rows: int
) -> None:
    """Small parts for an owner share one segment; large ones get a segment a split."""
    monkeypatch.setattr(files, "SEGMENT_ROWS", segment_rows)
    rows = sample(500)
    path = write(rows, str(tmp_path / "a.parquet"), "parquet")
    other = write(sample(100, seed=3), str(tmp_path / "b.parquet"), "parquet")
    splits = _row_groups(path) + _row_groups(other)
    told: list[int] = []
    staged: files.Staged = {}
    reply = files.read_files(_request(path, splits, 7), 0, staged, told.append)
    assert reply["rows"] == 600
    assert sorted(told) == list(range(len(splits)))  # each split once
    segments = reply["segments"]
    if segment_rows > 600:
        assert sorted(dest for dest, _ in segments) == [1, 2]
    else:
        assert len(segments) > len(splits)  # a segment per row group and owner
    expected = files.by_owner(pa.concat_tables([rows, pq.read_table(other)]), ["device"], 3)
    for found, wanted in zip(_placed(reply, staged, 7, 3), expected, strict=True):
        # the same rows (a small part waits for the owner's last segment: order may differ)
        assert _sorted(found).equals(_sorted(wanted.combine_chunks()))
    assert not shm_of_ours()


def test_first_bad_row_group_named_and_nothing_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bad row groups: the first in the file is named, whichever thread fails first;
    the segments the good row groups wrote are unlinked and nothing stays staged."""
    monkeypatch.setattr(files, "SEGMENT_ROWS", 1)
    values = [7] * 250 + [2**63 + 5] + [7] * 200 + [2**63 + 6] + [7] * 48
    rows = sample(500).set_column(2, "n", pa.array(values, pa.uint64()))
    path = write(rows, str(tmp_path / "bad.parquet"), "parquet")
    staged: files.Staged = {9: [("t", sample(1))]}
    with pytest.raises(SchemaError, match=r"at row 50.*bad\.parquet', row group 2\)"):
        files.read_files(_request(path, _row_groups(path), 9), 0, staged)
    assert 9 not in staged
    assert not shm_of_ours()


def test_text_splits_cut_at_once(tmp_path: Path) -> None:
    path = write(sample(400), str(tmp_path / "c.csv"), "csv")
    size = os.path.getsize(path)
    names = list(SCHEMA.names)
    bounds = [0, size // 3, 2 * size // 3, size]
    text = Path(path).read_bytes()
    cuts = [0] + [text.index(b"\n", b) + 1 for b in bounds[1:-1]] + [size]
    splits = [FileSplit(path, a, b, names=names) for a, b in itertools.pairwise(cuts)]
    staged: files.Staged = {}
    reply = files.read_files(_request(path, splits, 11, workers=2), 0, staged)
    assert reply["rows"] == 400
    whole = read_split(FileSplit(path, names=names), resolve(path, None, {}), SCHEMA, "t")
    expected = files.by_owner(whole, ["device"], 2)
    for found, wanted in zip(_placed(reply, staged, 11, 2), expected, strict=True):
        assert found.equals(wanted.combine_chunks())


def test_small_row_groups_are_read_together(tmp_path: Path) -> None:
    """Row groups under `MIN_SPLIT_ROWS` join their neighbours (contiguous, each read
    once): 4,000 row groups of 250 rows were 4,000 splits, each parsing the file's footer."""
    path = str(tmp_path / "small.parquet")
    pq.write_table(pa.table({"x": list(range(20_000))}), path, row_group_size=100)
    opts = resolve(path, None, {})
    shares = splits.plan([path], opts, 2, "t")
    groups = [g for share in shares for split in share for g in split.row_groups]
    assert groups == list(range(200))
    for share in shares:
        assert len(share) == 1  # 10,000 rows a worker: under one split's minimum
    big = str(tmp_path / "big.parquet")
    pq.write_table(pa.table({"x": list(range(4 * splits.MIN_SPLIT_ROWS))}), big,
                   row_group_size=splits.MIN_SPLIT_ROWS // 2)  # fmt: skip
    sizes = [len(s.row_groups) for share in splits.plan([big], opts, 2, "t") for s in share]
    assert sizes == [2, 2, 2, 2]


def test_a_files_footer_is_parsed_once_per_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A footer grows with the row groups (1.2 MB, 11 ms to parse for 4,000): the worker's
    splits of one file, read at once, parse it once between them."""
    path = write(sample(500), str(tmp_path / "f.parquet"), "parquet")
    request = _request(path, _row_groups(path), 13)
    parsed: list[str] = []
    real = pq.ParquetFile

    def counting(source: str, metadata: Any = None, **kwargs: Any) -> Any:
        if metadata is None:
            parsed.append(source)
        return real(source, metadata=metadata, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    staged: files.Staged = {}
    reply = files.read_files(request, 0, staged)
    _placed(reply, staged, 13, 3)  # unlinks the segments
    assert reply["rows"] == 500 and parsed == [path]
