"""A load's progress: input bytes read, reported as a worker finishes each of its splits,
then the commit; the same through `connect(uri)` and as a bar in `laminardb-cluster sql "COPY ..."`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from files_support import COLUMNS, fresh, sample, write

from laminardb.files import progress, splits
from laminardb.wire.protocol import FileSplit

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def small_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "MIN_SPLIT_BYTES", 1)
    monkeypatch.setattr(splits, "MIN_SPLIT_ROWS", 1)


def _files(tmp_path: Path, fmt: str) -> tuple[str, int]:
    ext = {"csv": "csv", "parquet": "parquet"}[fmt]
    paths = [write(sample(400, seed=i), str(tmp_path / f"p{i}.{ext}"), fmt) for i in range(3)]
    return str(tmp_path / f"p*.{ext}"), sum(os.path.getsize(p) for p in paths)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_reports_climb_to_every_input_byte_then_commit(
    cluster: Any, tmp_path: Path, fmt: str
) -> None:
    pattern, size = _files(tmp_path, fmt)
    name = fresh("pg")
    cluster.execute(f"CREATE SOURCE {name} ({COLUMNS}) PARTITION BY (device)")
    seen: list[tuple[str, int, int]] = []
    assert cluster.load(name, pattern, progress=lambda *r: seen.append(r)) == 1200
    assert seen[0][:2] == ("read", 0) and seen[-1] == ("commit", size, size)
    assert all(total == size for _, _, total in seen)
    done = [d for _, d, _ in seen]
    assert done == sorted(done)
    steps = [d for phase, d, _ in seen[1:] if phase == "read"]
    assert len(steps) >= 3 and len(set(steps)) == len(steps)  # a step for each split (files: 3)


def test_one_parquet_file_steps_per_row_group(cluster: Any, tmp_path: Path) -> None:
    """A worker reads a file's row groups at once and reports each: the bar of a single
    Parquet file moves once per row group, not once per worker."""
    path = write(sample(500), str(tmp_path / "one.parquet"), "parquet")
    name = fresh("pg")
    cluster.execute(f"CREATE SOURCE {name} ({COLUMNS}) PARTITION BY (device)")
    seen: list[tuple[str, int, int]] = []
    assert cluster.load(name, path, progress=lambda *r: seen.append(r)) == 500
    steps = [d for phase, d, _ in seen[1:] if phase == "read"]
    assert len(set(steps)) == len(steps) == pq.ParquetFile(path).num_row_groups >= 5


def test_a_failing_watcher_does_not_fail_the_load(cluster: Any, tmp_path: Path) -> None:
    pattern, _ = _files(tmp_path, "csv")
    name = fresh("pg")
    cluster.execute(f"CREATE SOURCE {name} ({COLUMNS})")

    def broken(phase: str, done: int, total: int) -> None:
        raise RuntimeError("watcher bug")

    assert cluster.load(name, pattern, progress=broken) == 1200
    assert cluster.sql(f"SELECT count(*) AS n FROM {name}").to_arrow()["n"].to_pylist() == [1200]


def test_a_watcher_that_is_not_callable_is_refused_before_loading(
    cluster: Any, tmp_path: Path
) -> None:
    pattern, _ = _files(tmp_path, "csv")
    name = fresh("pg")
    cluster.execute(f"CREATE SOURCE {name} ({COLUMNS})")
    with pytest.raises(TypeError, match="progress must be a callable"):
        cluster.load(name, pattern, progress=5)
    assert cluster.sql(f"SELECT count(*) AS n FROM {name}").to_arrow()["n"].to_pylist() == [0]


def test_split_bytes_counts_ranges_whole_files_and_row_groups(tmp_path: Path) -> None:
    whole = tmp_path / "a.csv"
    whole.write_bytes(b"x" * 100)
    pq_file = tmp_path / "b.parquet"
    pq_file.write_bytes(b"y" * 90)
    shares = [
        [FileSplit(str(whole), 0, 40), FileSplit(str(pq_file), row_groups=[0, 1])],
        [FileSplit(str(whole), 40, -1), FileSplit(str(pq_file), row_groups=[2])],
    ]
    assert progress.split_bytes(shares) == [[40, 60], [60, 30]]
