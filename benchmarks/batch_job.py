"""Batch job: load files, run two GROUP BY reports, write one result; cluster vs one native.

The same files (generated once in a temp folder: one Parquet file of 1M-row groups and one
CSV file) go through:
  * `native`  one `laminardb_native` instance fed through pyarrow (read the file, insert);
  * `cluster` `laminardb.open(workers=N)` with `conn.load()` (the workers read the file);
    with `--logged` also `cluster logged`, the same on `open(<temp folder>)`, whose load is
    also written to the log before it commits;
  * `duckdb`, `polars` as outside references, when importable.
Each job: load, `Q1` (20 groups), `Q2` (100k groups, GROUP BY the partition key), write Q2's
result to Parquet. The clock starts at the load: opening an engine (for the cluster: starting
its workers and letting them import their file readers with a tiny load, as this process
has imported its own; for Parquet also waiting for polars, which a worker imports once idle
after its first Parquet load, unless `--parquet-reader pyarrow`) is not timed. Answers are checked against native's before the times
count. Every figure is also given as native time / engine time (above 1: faster than one
native instance). `cpu s` columns: CPU seconds of the phase summed over this process and its
worker processes (the work done; wall time on a shared machine moves with others' load).

Usage: `.venv/bin/python -m benchmarks.batch_job [--rows 2000000] [--workers 2[,4,8]]
[--formats parquet,csv] [--repeat 1] [--logged] [--json out.json]` (`--rows 10000000` is the issue's size).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

import laminardb
from laminardb.files import polars_read

COLUMNS = "id BIGINT, customer VARCHAR, region VARCHAR, amount DOUBLE, qty BIGINT"
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("customer", pa.string()),
        ("region", pa.string()),
        ("amount", pa.float64()),
        ("qty", pa.int64()),
    ]
)
Q1 = "SELECT region, count(*) AS n, sum(amount) AS total FROM t GROUP BY region"
Q2 = "SELECT customer, sum(amount) AS total, sum(qty) AS items FROM t GROUP BY customer"


def generate(rows: int, folder: str) -> dict[str, str]:
    """One Parquet and one CSV file of `rows` rows (100k customers, 20 regions)."""
    rng = np.random.default_rng(7)
    customers = pa.array([f"c{i:06d}" for i in range(100_000)])
    regions = pa.array([f"region-{i:02d}" for i in range(20)])
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "customer": customers.take(pa.array(rng.integers(0, 100_000, rows))),
            "region": regions.take(pa.array(rng.integers(0, 20, rows))),
            "amount": pa.array(np.round(rng.random(rows) * 1000, 2)),
            "qty": pa.array(rng.integers(1, 10, rows)),
        },
        schema=SCHEMA,
    )
    paths = {
        "parquet": os.path.join(folder, "sales.parquet"),
        "csv": os.path.join(folder, "sales.csv"),
    }
    pq.write_table(table, paths["parquet"], row_group_size=1 << 20)
    pacsv.write_csv(table, paths["csv"])
    for i in range(16):  # tiny files, at least one per worker, for the untimed warm-up
        pq.write_table(table.slice(i, 1), os.path.join(folder, f"warm-{i}.parquet"))
        pacsv.write_csv(table.slice(i, 1), os.path.join(folder, f"warm-{i}.csv"))
    return paths


def _read(path: str, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path)
    types = pacsv.ConvertOptions(column_types=SCHEMA)
    return pacsv.read_csv(path, convert_options=types)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live descendants (the cluster's
    workers): the work a job did, which other sessions' load on a shared box does not
    inflate the way it inflates wall time."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class Laps:
    """Seconds per phase of one job: load, then the rest (queries and the write), and the
    CPU seconds of each phase summed over every process of the engine."""

    def __init__(self) -> None:
        self.cpu_start = self.cpu_last = _cpu_seconds()
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        cpu = _cpu_seconds()
        self.phases[name] = now - self.last
        self.cpu[name] = cpu - self.cpu_last
        self.last, self.cpu_last = now, cpu

    @property
    def total(self) -> float:
        return self.last - self.start


Job = Callable[[str, str, str], tuple[pa.Table, pa.Table, Laps]]
"""(file, format, output) -> (Q1, Q2, the phases from the start of the load to the written
file). Opening the engine (for the cluster: starting its worker processes) is not timed."""


def native_job(path: str, fmt: str, out: str) -> tuple[pa.Table, pa.Table, Laps]:
    import laminardb_native as native

    conn = native.open(":memory:")
    try:
        conn.execute(f"CREATE SOURCE t ({COLUMNS})")
        laps = Laps()
        conn.insert("t", _read(path, fmt).combine_chunks().to_batches()[0])
        laps.lap("load")
        q1 = conn.sql(Q1).to_arrow()
        q2 = conn.sql(Q2).to_arrow()
        pq.write_table(q2, out)
        laps.lap("report")
        return q1, q2, laps
    finally:
        conn.close()


def cluster_job(workers: int, keyed: bool, logged: bool = False) -> Job:
    def job(path: str, fmt: str, out: str) -> tuple[pa.Table, pa.Table, Laps]:
        folder = tempfile.mkdtemp(prefix="laminardb-bench-db-") if logged else None
        try:
            return _cluster_job(folder or ":memory:", workers, keyed, path, fmt, out)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    return job


def _cluster_job(
    db: str, workers: int, keyed: bool, path: str, fmt: str, out: str
) -> tuple[pa.Table, pa.Table, Laps]:
    with laminardb.open(db, workers=workers) as conn:
        key = " PARTITION BY (customer)" if keyed else ""
        conn.execute(f"CREATE SOURCE t ({COLUMNS}){key}")
        # untimed, like this process's own imports: the workers import their readers
        conn.execute(f"CREATE SOURCE warm ({COLUMNS})")
        conn.load("warm", os.path.join(os.path.dirname(path), f"warm-*.{fmt}"))
        if fmt == "parquet" and os.environ.get(polars_read.READER_ENV) != "pyarrow":
            parquet_reader(conn)
        laps = Laps()
        conn.load("t", path)
        laps.lap("load")
        q1 = conn.sql(Q1).to_arrow()
        result = conn.sql(Q2)
        result.write_parquet(out)
        laps.lap("report")
        return q1, result.to_arrow(), laps


def parquet_reader(conn: Any, deadline_s: float = 30.0) -> str:
    """Wait (up to `deadline_s`) for the workers to import polars, which they do once idle
    after their first Parquet load (laminardb/files/polars_read.py): a one-off import, like
    this process's own. Returns the reader the timed load will use."""
    from laminardb.wire import protocol
    from workers import preload

    deadline = time.monotonic() + deadline_s
    while True:
        replies = conn._cluster.broadcast(lambda rid: protocol.Call(rid, "parquet_reader", []))
        readers = {r.value for r in replies}
        if readers == {"polars"} or time.monotonic() > deadline:
            return "+".join(sorted(readers))
        time.sleep(2 * preload.FIRST_QUIET_S)  # a question keeps a worker busy: leave it idle


def duckdb_job(path: str, fmt: str, out: str) -> tuple[pa.Table, pa.Table, Laps]:
    import duckdb

    conn = duckdb.connect()
    try:
        laps = Laps()
        reader = "read_parquet" if fmt == "parquet" else "read_csv"
        conn.execute(f"CREATE TABLE t AS SELECT * FROM {reader}('{path}')")
        laps.lap("load")
        q1 = conn.sql(Q1).to_arrow_table()
        conn.execute(f"COPY ({Q2}) TO '{out}' (FORMAT parquet)")
        laps.lap("report")
        return q1, pq.read_table(out), laps
    finally:
        conn.close()


def polars_job(path: str, fmt: str, out: str) -> tuple[pa.Table, pa.Table, Laps]:
    import polars as pl

    laps = Laps()
    df = pl.read_parquet(path) if fmt == "parquet" else pl.read_csv(path)
    laps.lap("load")
    q1 = df.group_by("region").agg(pl.len().alias("n"), pl.col("amount").sum().alias("total"))
    q2 = df.group_by("customer").agg(
        pl.col("amount").sum().alias("total"), pl.col("qty").sum().alias("items")
    )
    q2.write_parquet(out)
    laps.lap("report")
    return q1.to_arrow(), q2.to_arrow(), laps


def _bag(table: pa.Table) -> list[tuple[Any, ...]]:
    rows = zip(*(c.to_pylist() for c in table.columns), strict=True)
    return sorted(tuple(round(v, 2) if isinstance(v, float) else v for v in r) for r in rows)


def _engines(workers: list[int], keyed: bool, logged: bool = False) -> dict[str, Job]:
    engines: dict[str, Job] = {"native": native_job}
    for n in workers:
        engines[f"cluster {n}w" + ("" if keyed else " unkeyed")] = cluster_job(n, keyed)
        if logged:
            label = f"cluster {n}w logged" + ("" if keyed else " unkeyed")
            engines[label] = cluster_job(n, keyed, logged=True)
    for name, job in (("duckdb", duckdb_job), ("polars", polars_job)):
        try:
            __import__(name)
        except ImportError:
            continue
        engines[name] = job
    return engines


def run(
    rows: int,
    workers: list[int],
    formats: list[str],
    repeat: int,
    keyed: bool = True,
    logged: bool = False,
) -> list[dict[str, Any]]:
    """Best-of-`repeat` wall time per (format, engine), the answers checked against native;
    the engines take turns within each round, so that a busy moment hits all of them."""
    folder = tempfile.mkdtemp(prefix="laminardb-bench-")
    results: list[dict[str, Any]] = []
    try:
        paths = generate(rows, folder)
        for fmt in formats:
            expected: tuple[list[Any], list[Any]] | None = None
            best: dict[str, Laps] = {}
            for _ in range(repeat):
                for name, job in _engines(workers, keyed, logged).items():
                    out = os.path.join(folder, f"out-{name.split()[0]}.parquet")
                    q1, q2, laps = job(paths[fmt], fmt, out)
                    answer = (_bag(q1), _bag(q2))
                    if expected is None:
                        expected = answer
                    elif answer != expected:
                        raise AssertionError(f"{name} answered differently from native ({fmt})")
                    if name not in best or laps.total < best[name].total:
                        best[name] = laps
            base = best["native"].total
            for name, laps in best.items():
                results.append(
                    {
                        "format": fmt,
                        "engine": name,
                        "rows": rows,
                        "seconds": laps.total,
                        "load_s": laps.phases["load"],
                        "report_s": laps.phases["report"],
                        "load_cpu_s": laps.cpu["load"],
                        "report_cpu_s": laps.cpu["report"],
                        "speedup_vs_native": base / laps.total,
                    }
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


@click.command()
@click.option("--rows", default=2_000_000, show_default=True, help="rows in each file")
@click.option(
    "--workers", default="2", show_default=True, help="worker counts, comma-separated: 2,4,8"
)
@click.option("--formats", default="parquet,csv", show_default=True)
@click.option("--repeat", default=1, show_default=True, help="best of this many runs")
@click.option("--keyed/--unkeyed", default=True, show_default=True, help="PARTITION BY customer")
@click.option("--logged", is_flag=True, help="also run the cluster on a logged open(path)")
@click.option(
    "--parquet-reader",
    type=click.Choice(["polars", "pyarrow"]),
    default="polars",
    show_default=True,
    help="what the workers decode Parquet with (pyarrow: as in a worker's first load)",
)
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(
    rows: int,
    workers: str,
    formats: str,
    repeat: int,
    keyed: bool,
    logged: bool,
    parquet_reader: str,
    json_path: str | None,
) -> None:
    """Load + two GROUP BY reports + write, for native, the cluster, DuckDB and polars."""
    if parquet_reader == "pyarrow":
        os.environ[polars_read.READER_ENV] = "pyarrow"  # the workers inherit it
    chosen = [f.strip() for f in formats.split(",") if f.strip()]
    counts = [int(n) for n in workers.split(",") if n.strip()]
    results = run(rows, counts, chosen, repeat, keyed, logged)
    for r in results:
        if r["engine"].startswith("cluster") and r["format"] == "parquet":
            r["parquet_reader"] = parquet_reader
    table = Table(title=f"batch job, {rows:,} rows, {os.cpu_count()} cores (best of {repeat})")
    columns = ("format", "engine", "load s", "load cpu s", "report s", "report cpu s")
    for column in (*columns, "total s", "native / engine"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for r in results:
        table.add_row(
            r["format"],
            r["engine"],
            f"{r['load_s']:.2f}",
            f"{r['load_cpu_s']:.2f}",
            f"{r['report_s']:.2f}",
            f"{r['report_cpu_s']:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['speedup_vs_native']:.2f}x",
        )
    Console().print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
