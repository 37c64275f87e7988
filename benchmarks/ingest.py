"""Ingest throughput: one native instance against the cluster, same data, same run.

Each case inserts the same rows into a keyed source and is timed until a query sees every
row (`SELECT count(*)` equals the total), so the cluster's buffering cannot flatter it.
Usage: `.venv/bin/python -m benchmarks.ingest [--rows N] [--workers 2] [--json out.json]`.

The cost of durability is measured in the same run: each case also runs on a cluster opened
with a path (every batch written to the log before it is committed), and its rate is
reported against the same cluster without a path and against one native instance; and again
with durability "sync" (every insert shipped, logged and fsynced before it returns).
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import click
import laminardb_native
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import laminardb

DDL = "CREATE SOURCE readings (ts BIGINT, device VARCHAR, value DOUBLE)"


def arrow_batches(rows: int, batch: int, keys: int) -> list[pa.Table]:
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        out.append(
            pa.table(
                {
                    "ts": pa.array(range(start, start + n), pa.int64()),
                    "device": pa.array([f"device-{(start + i) % keys:06d}" for i in range(n)]),
                    "value": pa.array([float(i % 1000) for i in range(n)]),
                }
            )
        )
    return out


def dict_batches(rows: int, batch: int, keys: int) -> list[list[dict[str, Any]]]:
    return [
        [
            {
                "ts": start + i,
                "device": f"device-{(start + i) % keys:06d}",
                "value": float(i % 1000),
            }
            for i in range(min(batch, rows - start))
        ]
        for start in range(0, rows, batch)
    ]


def run_case(conn: Any, ddl: str, batches: list[Any]) -> float:
    conn.execute(ddl)
    total = sum(len(b) if isinstance(b, list) else b.num_rows for b in batches)
    started = time.perf_counter()
    for b in batches:
        conn.insert("readings", b)
    seen = conn.sql("SELECT count(*) FROM readings").fetchall()[0][0]
    elapsed = time.perf_counter() - started
    if seen != total:
        raise AssertionError(f"saw {seen} rows of {total}")
    return total / elapsed


def measure(make: Callable[[], Any], ddl: str, batches: list[Any], repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        conn = make()
        try:
            rates.append(run_case(conn, ddl, batches))
        finally:
            conn.close()
    return statistics.median(rates)


def open_logged(db: str, workers: int, durability: str) -> Any:
    """A cluster persisting to `db`; durability "sync": every insert fsynced before it returns."""
    return laminardb.open(db, workers=workers, durability=durability)


def measure_with_path(
    workers: int, ddl: str, batches: list[Any], repeat: int, durability: str = "buffered"
) -> float:
    """Like `measure`, on a cluster persisting to a fresh folder each run (removed after)."""
    rates = []
    for _ in range(repeat):
        folder = tempfile.mkdtemp(prefix="bench-ingest-")
        try:
            conn = open_logged(f"{folder}/db", workers, durability)
            try:
                rates.append(run_case(conn, ddl, batches))
            finally:
                conn.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(rates)


@click.command()
@click.option("--rows", default=1_000_000, show_default=True, help="rows per Arrow case")
@click.option("--dict-rows", default=100_000, show_default=True, help="rows per list-of-dicts case")
@click.option("--workers", default=2, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="runs per case (median reported)")
@click.option("--json", "json_path", default=None, help="also write the figures here")
@click.option(
    "--durability/--no-durability", default=True, show_default=True, help="also run with a path"
)
def main(
    rows: int, dict_rows: int, workers: int, repeat: int, json_path: str | None, durability: bool
) -> None:
    """Rows/s to queryable, native vs cluster, Arrow batches and 100-row list-of-dicts inserts."""
    cases = [
        ("Arrow, 65,536-row batches", arrow_batches(rows, 65_536, 100_000)),
        ("Arrow, 8,192-row batches", arrow_batches(rows, 8_192, 100_000)),
        ("list of dicts, 100 rows", dict_batches(dict_rows, 100, 1_000)),
    ]
    cluster = laminardb.open(workers=workers)
    cluster.close()  # warm the worker imports once so the first case is not penalised
    results: list[dict[str, Any]] = []
    for name, batches in cases:
        native = measure(lambda: laminardb_native.open(":memory:"), DDL, batches, repeat)
        ours = measure(
            lambda: laminardb.open(workers=workers), DDL + " PARTITION BY (device)", batches, repeat
        )
        result = {
            "case": name,
            "native_rows_s": native,
            "cluster_rows_s": ours,
            "ratio": ours / native,
        }
        if durability:
            keyed = DDL + " PARTITION BY (device)"
            logged = measure_with_path(workers, keyed, batches, repeat)
            synced = measure_with_path(workers, keyed, batches, repeat, "sync")
            result.update(
                path_rows_s=logged,
                path_ratio=logged / native,
                path_vs_memory=logged / ours,
                sync_rows_s=synced,
                sync_vs_memory=synced / ours,
                sync_ratio=synced / native,
            )
        results.append(result)
    table = Table(
        title=f"Ingest to queryable: {workers} workers vs one native instance (median of {repeat})"
    )
    for col in ("case", "native rows/s", "cluster rows/s", "ratio"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["case"],
            f"{r['native_rows_s']:,.0f}",
            f"{r['cluster_rows_s']:,.0f}",
            f"{r['ratio']:.2f}x",
        )
    Console().print(table)
    if durability:
        cost = Table(title=f"Cost of durability: the same cluster with a path (median of {repeat})")
        cols = ("case", "no path rows/s", "path rows/s", "path / no path", "path / native")
        for col in (*cols, "sync rows/s", "sync / no path", "sync / native"):
            cost.add_column(col, justify="right")
        for r in results:
            cost.add_row(
                r["case"],
                f"{r['cluster_rows_s']:,.0f}",
                f"{r['path_rows_s']:,.0f}",
                f"{r['path_vs_memory']:.2f}x",
                f"{r['path_ratio']:.3f}x",
                f"{r['sync_rows_s']:,.0f}",
                f"{r['sync_vs_memory']:.2f}x",
                f"{r['sync_ratio']:.3f}x",
            )
        Console().print(cost)
    if json_path:
        machine = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "workers": workers,
        }
        with open(json_path, "w") as fh:
            json.dump({"machine": machine, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
