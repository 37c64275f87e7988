"""The first file load of a fresh process: one native instance (pyarrow read + insert) against
a fresh cluster's `conn.load()` (the workers read), each in its own new interpreter, so every
one-off import is paid inside the timed call as a user's first load pays it.

`--idle` seconds pass between opening and the load (a script that does something else
first); the workers import their file readers in the background while idle
(workers/preload.py), so with a short idle the cluster's first load costs what a later one
does. Usage: `.venv/bin/python -m benchmarks.first_load [--rows 20000] [--idle 0,1]
[--repeat 3]`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import click
from rich.console import Console
from rich.table import Table

_NATIVE = """
import sys, time
import laminardb_native
conn = laminardb_native.open(":memory:")
conn.execute("CREATE SOURCE t (k BIGINT, v DOUBLE)")
time.sleep(float(sys.argv[2]))
start = time.perf_counter()
if sys.argv[3] == "parquet":
    import pyarrow.parquet as reader
    table = reader.read_table(sys.argv[1])
else:
    import pyarrow.csv as reader
    table = reader.read_csv(sys.argv[1])
conn.insert("t", table.combine_chunks().to_batches()[0])
print(time.perf_counter() - start)
conn.close()
"""

_CLUSTER = """
import sys, time
import laminardb
conn = laminardb.open(":memory:", workers=int(sys.argv[4]))
conn.execute("CREATE SOURCE t (k BIGINT, v DOUBLE) PARTITION BY (k)")
time.sleep(float(sys.argv[2]))
start = time.perf_counter()
conn.load("t", sys.argv[1])
print(time.perf_counter() - start)
conn.close()
"""


def _files(rows: int, folder: str) -> dict[str, str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.table({"k": np.arange(rows), "v": np.random.default_rng(1).random(rows)})
    paths = {"parquet": os.path.join(folder, "t.parquet"), "csv": os.path.join(folder, "t.csv")}
    pq.write_table(table, paths["parquet"])
    pacsv.write_csv(table, paths["csv"])
    return paths


def _timed(code: str, path: str, idle: float, fmt: str, workers: int) -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    done = subprocess.run(
        [sys.executable, "-c", code, path, str(idle), fmt, str(workers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env=env,
    )
    return float(done.stdout.strip().splitlines()[-1]) * 1000


@click.command()
@click.option("--rows", default=20_000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--idle", default="0,1", show_default=True, help="seconds before the load")
@click.option("--repeat", default=3, show_default=True, help="fresh processes per figure")
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(rows: int, workers: int, idle: str, repeat: int, json_path: str | None) -> None:
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        paths = _files(rows, folder)
        for fmt, path in paths.items():
            for wait in (float(x) for x in idle.split(",")):
                native = [_timed(_NATIVE, path, wait, fmt, workers) for _ in range(repeat)]
                mine = [_timed(_CLUSTER, path, wait, fmt, workers) for _ in range(repeat)]
                figures.append(
                    {
                        "format": fmt,
                        "idle_s": wait,
                        "native_ms": statistics.median(native),
                        "cluster_ms": statistics.median(mine),
                    }
                )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(title=f"first load of a fresh process, {rows:,} rows (load average {load})")
    for name in ("format", "idle before", "native ms", "cluster ms", "ratio"):
        table.add_column(name, justify="right")
    for f in figures:
        table.add_row(
            f["format"],
            f"{f['idle_s']:g} s",
            f"{f['native_ms']:.0f}",
            f"{f['cluster_ms']:.0f}",
            f"{f['cluster_ms'] / f['native_ms']:.2f}x",
        )
    Console(width=120).print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump({"rows": rows, "workers": workers, "figures": figures}, out, indent=2)


if __name__ == "__main__":
    main()
