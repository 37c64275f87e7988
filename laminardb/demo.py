"""The main job in one run: a 2-worker engine, keyed ingestion, queries, per-worker rows.

Run it with `scripts/demo.sh` (or `laminardb-demo` inside the virtual environment).
"""

from __future__ import annotations

import time

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import laminardb


def _show(console: Console, title: str, table: pa.Table) -> None:
    view = Table(title=title, title_justify="left")
    for name in table.column_names:
        view.add_column(name)
    for row in table.to_pylist():
        view.add_row(
            *(
                "NULL" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
                for v in row.values()
            )
        )
    console.print(view)


@click.command()
@click.option("--workers", default=2, show_default=True, help="worker processes to start")
@click.option("--rows", default=1_000_000, show_default=True, help="rows of generated sensor data")
def main(workers: int, rows: int) -> None:
    """Start a sharded LaminarDB, load keyed sensor data, query it, show where rows live."""
    console = Console()
    started = time.perf_counter()
    with laminardb.open(":memory:", workers=workers) as db:
        console.print(
            f"[bold]laminardb[/]: {workers} workers up in {time.perf_counter() - started:.2f} s"
        )
        db.execute(
            "CREATE SOURCE readings (ts BIGINT, device VARCHAR, value DOUBLE) PARTITION BY (device)"
        )
        ts = pa.array(range(rows), pa.int64())
        devices = pa.array([f"device-{i % 100:03d}" for i in range(rows)])
        values = pa.array([float((i * 7919) % 1000) / 10 for i in range(rows)])
        t0 = time.perf_counter()
        db.insert("readings", pa.table({"ts": ts, "device": devices, "value": values}))
        db.insert(
            "readings", [{"ts": rows + i, "device": "device-new", "value": 1.5} for i in range(100)]
        )
        total = db.sql("SELECT count(*) AS n FROM readings").to_arrow()
        elapsed = time.perf_counter() - t0
        console.print(
            f"ingested {total.column(0)[0].as_py():,} rows in {elapsed:.2f} s (to queryable)"
        )
        _show(
            console,
            "Top devices by average value",
            db.sql(
                "SELECT device, count(*) AS n, avg(value) AS avg_value, max(value) AS max_value "
                "FROM readings GROUP BY device ORDER BY avg_value DESC, device LIMIT 5"
            ).to_arrow(),
        )
        _show(
            console,
            "One device",
            db.sql(
                "SELECT * FROM readings WHERE device = 'device-new' ORDER BY ts LIMIT 3"
            ).to_arrow(),
        )
        view = Table(title="Workers", title_justify="left")
        for col in ("shard", "pid", "alive", "rows ingested", "RSS MiB"):
            view.add_column(col, justify="right")
        for w in db.workers():
            view.add_row(
                str(w.shard),
                str(w.pid),
                str(w.alive),
                f"{w.rows_ingested:,}",
                f"{w.rss_bytes / 2**20:.0f}",
            )
        console.print(view)
        console.print(
            "sources:", ", ".join(f"{s.name} PARTITION BY {s.partition_by}" for s in db.sources())
        )
    console.print("closed: every worker stopped")


if __name__ == "__main__":
    main()
