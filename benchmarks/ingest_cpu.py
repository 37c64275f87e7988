"""The coordinator's CPU seconds per million ingested rows (2 workers, keyed by a VARCHAR).

CPU time of the calling process is far less disturbed by other load than wall time, so this
is how two versions of the ingest path are compared on a shared machine: run each side
alternately and compare the minimum and median. Timed until `SELECT count(*)` sees every row.

    python -m benchmarks.ingest_cpu dict 5     # 100,000 rows as 100-row lists of dicts
    python -m benchmarks.ingest_cpu arrow 5    # 524,288 rows as 65,536-row Arrow tables
"""

from __future__ import annotations

import json
import statistics
import time

import click

import laminardb
from benchmarks.ingest import DDL, arrow_batches, dict_batches


@click.command()
@click.argument("case", type=click.Choice(["dict", "arrow"]))
@click.argument("repeat", type=int, default=5)
def main(case: str, repeat: int) -> None:
    """Print CPU s per million rows (min, median) and rows/s (best, median) as JSON."""
    if case == "dict":
        total, batches = 100_000, dict_batches(100_000, 100, 1_000)
    else:
        total, batches = 524_288, arrow_batches(524_288, 65_536, 100_000)
    cpu: list[float] = []
    rate: list[float] = []
    for _ in range(repeat):
        with laminardb.open(workers=2) as conn:
            conn.execute(DDL + " PARTITION BY (device)")
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for batch in batches:
                conn.insert("readings", batch)
            assert conn.sql("SELECT count(*) FROM readings").fetchall()[0][0] == total
            cpu.append((time.process_time() - cpu0) / total * 1e6)
            rate.append(total / (time.perf_counter() - wall0))
    print(
        json.dumps(
            {
                "case": case,
                "cpu_s_per_Mrow_min": round(min(cpu), 3),
                "cpu_s_per_Mrow_median": round(statistics.median(cpu), 3),
                "rows_s_best": round(max(rate)),
                "rows_s_median": round(statistics.median(rate)),
            }
        )
    )


if __name__ == "__main__":
    main()
