"""The benchmark harness: its pure parts (figures, JSON, table, profile buckets) and one tiny
smoke run of the `bench` command that must write its JSON and PNG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from benchmarks.cli import bench, parse_workers
from benchmarks.harness import profiler, report
from benchmarks.harness.model import (
    CLUSTER,
    NATIVE,
    Measurement,
    ProcessStat,
    measurements_from_json,
    percentile,
    ratio,
    summarise,
    to_json,
    validate,
)

MACHINE = {"cores": 2, "memory_bytes": 1 << 30, "python": "3.11", "versions": {}}


def m(
    target: str, rows: int, seconds: float, workers: int | None = None, **kw: object
) -> Measurement:
    return Measurement("w", kw.pop("case", "c"), target, workers, rows, seconds, **kw)  # type: ignore[arg-type]


def test_percentile_and_ratio() -> None:
    assert percentile([], 99) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert ratio(10.0, 5.0) == 2.0
    assert ratio(None, 5.0) is None
    assert ratio(1.0, 0.0) is None


def test_summarise_ratios_against_the_native_run_of_the_same_case() -> None:
    procs = [
        ProcessStat("coordinator", 1, 50.0, 100),
        ProcessStat("worker 0", 2, 80.0, 10),
        ProcessStat("worker 1", 3, 70.0, 20),
    ]
    rows = summarise(
        [
            m(NATIVE, 1000, 1.0),
            m(CLUSTER, 1000, 0.5, workers=2, processes=procs, latencies_s=[0.1, 0.3, 0.2]),
            m(NATIVE, 10, 1.0, case="other"),
            m(CLUSTER, 0, 0.0, workers=2, case="other", error="QueryError: boom"),
            m(CLUSTER, 5, 1.0, workers=1, case="no baseline"),
        ]
    )
    native, cluster, _, failed, orphan = rows
    assert native.ratio == 1.0
    assert cluster.rows_per_s == 2000.0 and cluster.ratio == 2.0
    assert cluster.median_s == pytest.approx(0.2)
    assert cluster.coordinator_cpu == 50.0 and cluster.workers_cpu == 150.0
    assert cluster.coordinator_rss == 100 and cluster.workers_rss == 30
    assert failed.rows_per_s is None and failed.ratio is None
    assert orphan.ratio is None
    assert cluster.m.label == "clusterx2" and native.m.label == "native"


def test_json_document_has_the_expected_shape() -> None:
    rows = summarise([m(NATIVE, 100, 1.0), m(CLUSTER, 100, 2.0, workers=2)])
    doc = json.loads(json.dumps(to_json(MACHINE, {"workers": [2]}, rows, None)))
    assert validate(doc) == []
    assert doc["results"][1]["ratio_to_native"] == 0.5
    assert doc["results"][1]["label"] == "clusterx2"
    assert measurements_from_json(doc) == [r.m for r in rows]
    doc["results"][1]["workers"] = None
    del doc["machine"]["cores"]
    problems = validate(doc)
    assert "results[1].workers missing for a cluster run" in problems
    assert "machine.cores missing" in problems


def test_table_rendering() -> None:
    rows = summarise(
        [
            m(NATIVE, 2_000_000, 1.0, latencies_s=[0.001, 0.002]),
            m(CLUSTER, 1_000_000, 1.0, workers=2, shm_bytes=3 << 20, note="answer differs"),
            m(CLUSTER, 0, 0.0, workers=3, error="ConnectionError: worker died"),
        ]
    )
    assert report.cells(rows[0])[:5] == ["w", "c", "native", "2.00 M", "1.00x"]
    assert report.cells(rows[0])[5] == "1.5"  # median ms
    assert report.cells(rows[1])[4] == "0.50x (answer differs)"
    assert report.cells(rows[1])[-1] == "3.0"
    assert report.cells(rows[2])[3] == "error: ConnectionError: worker died"
    console = Console(width=200, record=True)
    console.print(report.table(rows, "title"))
    text = console.export_text()
    assert "clusterx2" in text and "error: ConnectionError" in text
    md = report.markdown(rows).splitlines()
    assert len(md) == 2 + len(rows) and md[2].startswith("| w | c | native |")


def test_chart_is_a_png(tmp_path: Path) -> None:
    rows = summarise(
        [m(NATIVE, 100, 1.0)]
        + [m(CLUSTER, 100 * n, 1.0, workers=n) for n in (1, 2, 3)]
        + [m("duckdb", 300, 1.0)]
    )
    path = tmp_path / "c.png"
    report.chart(rows, str(path), "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_buckets() -> None:
    inner = ("/x/laminardb/ingest/partition.py", "split")
    assert profiler.classify([("/usr/lib/pyarrow/compute.py", "call"), inner]) == profiler.HASHING
    assert profiler.classify([("/x/laminardb/ingest/cast.py", "conform")]) == profiler.CASTING
    assert profiler.classify([("/x/laminardb/ingest/router.py", "_write_next")]) == (
        profiler.SERIALISING
    )
    assert profiler.classify([("/x/laminardb/ingest/router.py", "ship")]) == profiler.OTHER
    assert profiler.classify([("/x/laminardb/cluster/supervisor.py", "collect")]) == (
        profiler.WAITING
    )
    assert profiler.where([("/usr/lib/threading.py", "wait"), inner]) == "ingest/partition.py:split"
    waiting = [
        ("/x/laminardb/cluster/supervisor.py", "collect"),
        ("/x/laminardb/cluster/supervisor.py", "request"),
        ("/x/laminardb/ingest/router.py", "_stage"),
    ]
    assert profiler.where(waiting) == "cluster/supervisor.py:collect <- ingest/router.py:_stage"
    assert profiler.where([("/usr/lib/json.py", "loads")]) == "json.py:loads"


def test_profile_samples_the_main_thread() -> None:
    prof = profiler.Profile()
    with prof.sampling():
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            pass
    summary = prof.summary()
    assert summary["samples"] > 0
    assert sum(summary["buckets"].values()) == pytest.approx(1.0)


def test_parse_workers() -> None:
    assert parse_workers("2,1,2") == [1, 2]
    assert parse_workers(None) == list(range(1, len(os.sched_getaffinity(0)) + 1))
    for bad in ("0", "a", ","):
        with pytest.raises(click.BadParameter):
            parse_workers(bad)


def test_bench_smoke_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        bench, ["--size", "tiny", "--workers", "1", "--out", str(out), "--profile"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads((out / "laminardb-bench.json").read_text())
    assert validate(doc) == []
    labels = {(r["workload"], r["label"]) for r in doc["results"]}
    for workload in ("ingest", "streaming", "queries", "batch job"):
        assert (workload, "native") in labels and (workload, "clusterx1") in labels
    errors = [r for r in doc["results"] if r["error"]]
    assert not errors, errors
    assert doc["profile"]["samples"] > 0
    assert (out / "laminardb-bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "x native" in (out / "laminardb-bench.md").read_text()


def test_profile_table_has_a_column_per_workload() -> None:
    prof = profiler.Profile()
    prof.add([("/x/laminardb/ingest/cast.py", "conform")])
    summary = prof.summary()
    summary["by_workload"] = {"streaming": prof.summary(top=1)}
    console = Console(width=200, record=True)
    console.print(report.profile_table(summary))
    text = console.export_text()
    assert "streaming (1)" in text and "casting/validation" in text and "100.0%" in text
