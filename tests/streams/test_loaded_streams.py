"""File loads into sources that streams read, against one native instance fed the same rows.

A load into a source with a WATERMARK, or one that a merged stream reads, must reach the
streams as one native `insert` of the files' rows would: the cluster watermark follows the
rows (so exactly native's rows are late) and the merged streams count them. Native is fed
the loaded rows, in file order, as one insert call; the cluster loads the files. Other
loads stay parallel and their rows still reach the streams the workers run.

Waits poll with deadlines, never sleep for a fixed time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_cumulative_streams import native_last, our_emissions
from test_merged_streams import (
    QUIESCED_MS,
    Row,
    arrow,
    assert_same_rows,
    canon,
    finish,
    read_native,
    read_until,
    run_pair,
    ticks,
)

import laminardb
from laminardb.files import splits

pytestmark = pytest.mark.timeout(120)

PLAIN = "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE){partition}"
TOTALS = (
    "CREATE STREAM tot AS SELECT COUNT(*) AS n, SUM(value) AS total, MAX(ts) AS hi, "
    "MIN(device) AS lo FROM ev"
)
PASSED = "CREATE STREAM hot AS SELECT ts, device, value FROM ev WHERE value > 2"


@pytest.fixture(autouse=True)
def small_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut even these small files into pieces, as a parallel load would cut big ones."""
    monkeypatch.setattr(splits, "MIN_SPLIT_BYTES", 1)


def calls_with_a_load(data: list[list[Row]], first: int, last: int) -> list[list[Row]]:
    """`data` with calls `first` to `last` joined into the one call that the load will be."""
    joined = list(itertools.chain.from_iterable(data[first:last]))
    return [*data[:first], joined, *data[last:]]


def write_files(rows: list[Row], folder: Path, fmt: str) -> str:
    """`rows` in three files of `fmt` (sorted names: the load reads them in this order)."""
    thirds = [rows[i * len(rows) // 3 : (i + 1) * len(rows) // 3] for i in range(3)]
    for i, part in enumerate(thirds):
        path = folder / f"part-{i}.{fmt}"
        if fmt == "parquet":
            pq.write_table(arrow(part), path, row_group_size=max(1, len(part) // 3))
        else:
            pacsv.write_csv(arrow(part), path)
    return str(folder / f"part-*.{fmt}")


def loading(at: int, folder: Path, fmt: str) -> Callable[[Any, int, list[Row]], None]:
    """A `run_pair` feed: call `at` is a load of files holding its rows, checked with its
    progress reports; every other call is an insert."""

    def feed(ours: Any, i: int, rows: list[Row]) -> None:
        if i != at:
            ours.insert("ev", arrow(rows))
            return
        heard: list[tuple[str, int, int]] = []
        files = write_files(rows, folder, fmt)
        assert ours.load("ev", files, progress=lambda *r: heard.append(r)) == len(rows)
        total = sum(p.stat().st_size for p in folder.glob(f"part-*.{fmt}"))
        assert heard[0] == ("read", 0, total) and heard[-1] == ("commit", total, total)
        assert heard[-2] == ("read", total, total)
        assert [done for _, done, _ in heard] == sorted(done for _, done, _ in heard)

    return feed


@pytest.mark.parametrize(
    ("workers", "keyed", "mode", "fmt"),
    [(2, False, "shuffled", "parquet"), (2, True, "late", "csv"), (3, False, "late", "parquet")],
)
def test_a_load_moves_the_watermark_of_windows_as_one_insert(
    workers: int, keyed: bool, mode: str, fmt: str, tmp_path: Path
) -> None:
    data = calls_with_a_load(
        finish(ticks(seed=workers + len(mode), mode=mode), workers, False), 3, 10
    )
    feed = loading(3, tmp_path, fmt)
    theirs, ours, native_subs, subs = run_pair(workers, keyed, data, feed=feed)  # WATERMARK
    try:
        assert_same_rows(native_subs, subs)
        count = "SELECT count(*) FROM ev"
        assert ours.sql(count).fetchall() == theirs.sql(count).fetchall()
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_load_counts_in_running_totals(fmt: str, tmp_path: Path) -> None:
    data = calls_with_a_load(ticks(seed=11, mode="shuffled"), 2, 9)
    streams = {"tot": TOTALS}
    feed = loading(2, tmp_path, fmt)
    theirs, ours, native_subs, subs = run_pair(2, False, data, streams, source=PLAIN, feed=feed)
    try:
        assert "tot" in ours._streams.merges.runs, ours._streams.merges.reasons
        want = native_last(native_subs["tot"], QUIESCED_MS)
        assert want, "native emitted nothing"
        seen = our_emissions(subs["tot"], want)
        assert seen and canon(seen[-1]) == want, f"last {seen[-1] if seen else None}, native {want}"
    finally:
        ours.close()
        theirs.close()


def test_a_parallel_load_reaches_the_workers_streams(tmp_path: Path) -> None:
    data = calls_with_a_load(ticks(seed=3, mode="ordered"), 1, 12)
    streams = {"hot": PASSED}
    feed = loading(1, tmp_path, "parquet")
    theirs, ours, native_subs, subs = run_pair(2, True, data, streams, source=PLAIN, feed=feed)
    try:
        assert not ours._streams.watches("ev", ours._catalog)  # read by the workers
        want = canon(read_native(native_subs["hot"], QUIESCED_MS))
        assert want
        assert read_until(subs["hot"], want) == want
    finally:
        ours.close()
        theirs.close()


def test_a_bad_file_reaches_no_stream(tmp_path: Path) -> None:
    ours = laminardb.open(":memory:", workers=2)
    try:
        ours.execute(PLAIN.format(partition=""))
        ours.execute(TOTALS)
        sub = ours.subscribe_stream("tot")
        ours.start()
        good = tmp_path / "a-good.csv"
        pacsv.write_csv(arrow([(1, "d1", 1.0), (2, "d2", 2.0)]), good)
        (tmp_path / "b-bad.csv").write_text("ts,device,value\n3,d3,3.0\nfour,d4,4.0\n")
        with pytest.raises(laminardb.SchemaError, match=r"b-bad\.csv.*line 3|line 3.*b-bad\.csv"):
            ours.load("ev", str(tmp_path / "*.csv"))
        assert ours.sql("SELECT count(*) FROM ev").fetchall() == [(0,)]
        assert ours.load("ev", str(good)) == 2
        seen = our_emissions(sub, canon([(2, 3.0, 2, "d1")]))
        assert [canon(rows) for rows in seen] == [canon([(2, 3.0, 2, "d1")])]
        assert ours.sql("SELECT count(*) FROM ev").fetchall() == [(2,)]
    finally:
        ours.close()
