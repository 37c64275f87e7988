"""VAR/STDDEV/MEDIAN inside expressions and HAVING: the two-stage merge against one native
instance and against the gather path it replaces.

`t` holds `--rows` rows (id, g, v, i) spread round-robin: g has `--groups` values, v is a
uniform double, i a small integer. Each case is timed on one native instance, on the
cluster (the `moments` two-stage merge) and on the cluster's gather path (`gather.run`, all
of `t`'s needed columns fetched into one engine: what these queries did before), best and
median of `--repeat` runs after one warm-up, every answer checked against the native one
first. Ratios are cluster / native.

Usage: `.venv/bin/python -m benchmarks.moments_expr [--rows 1000000] [--groups 100]
[--workers 2] [--repeat 5]`
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import click
import laminardb_native
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import laminardb
from benchmarks.queries import answer, same, timed
from laminardb.plan import gather

DDL = "CREATE SOURCE t (id BIGINT, g BIGINT, v DOUBLE, i BIGINT)"

CASES = [
    ("stddev(v) * 2 by g", "SELECT g, stddev(v) * 2 AS s FROM t GROUP BY g", False),
    (
        "HAVING var_samp(v) > x",
        "SELECT g, count(*) FROM t GROUP BY g HAVING var_samp(v) > 0.0833",
        False,
    ),
    ("median(i) * 2 by g", "SELECT g, median(i) * 2 AS m FROM t GROUP BY g", False),
    ("median(i % 10) * 2 by g", "SELECT g, median(i % 10) * 2 AS m FROM t GROUP BY g", False),
    (
        "percentile_cont(i % 10, 0.9) + 1 by g",
        "SELECT g, percentile_cont(i % 10, 0.9) + 1 AS p FROM t GROUP BY g",
        False,
    ),
    (
        "median(i) + avg, ORDER BY expr LIMIT 10",
        "SELECT g, median(i) + avg(v) AS m FROM t GROUP BY g ORDER BY stddev(v) * 3 DESC, g "
        "LIMIT 10",
        True,
    ),
]


def _data(rows: int, groups: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "g": pa.array(rng.integers(0, groups, rows, dtype=np.int64)),
            "v": pa.array(rng.random(rows)),
            "i": pa.array(rng.integers(0, 1000, rows, dtype=np.int64)),
        }
    )


def _gathered(conn: Any, sql: str) -> pa.Table:
    conn._router.flush()
    table: pa.Table = gather.run(sql, conn._tables_read(sql), conn._catalog, conn._fetch)
    return table


@click.command()
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--groups", default=100, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--repeat", default=5, show_default=True)
def main(rows: int, groups: int, workers: int, repeat: int) -> None:
    data = _data(rows, groups)
    one: Any = laminardb_native.open(":memory:")
    conn: Any = laminardb.open(":memory:", workers=workers)
    try:
        for engine in (one, conn):
            engine.execute(DDL)
            for batch in data.to_batches(max_chunksize=100_000):
                engine.insert("t", batch)
        out = Table(title=f"moments_expr: {rows:,} rows, {groups} groups, {workers} workers")
        for column in ("case", "native ms", "cluster ms", "gather ms", "cluster/native"):
            out.add_column(column)
        for name, sql, ordered in CASES:
            expected = answer(one, sql)
            for got in (answer(conn, sql), _gathered(conn, sql)):
                if not same(expected, got, ordered):
                    raise SystemExit(f"wrong answer for {sql}")
            times: dict[str, list[float]] = {"native": [], "cluster": [], "gather": []}
            for _ in range(repeat):
                times["native"].append(timed(functools.partial(answer, one, sql)))
                times["cluster"].append(timed(functools.partial(answer, conn, sql)))
                times["gather"].append(timed(functools.partial(_gathered, conn, sql)))
            med = {k: statistics.median(v) for k, v in times.items()}
            out.add_row(
                name,
                f"{med['native']:.1f}",
                f"{med['cluster']:.1f}",
                f"{med['gather']:.1f}",
                f"{med['cluster'] / med['native']:.2f}",
            )
        Console().print(out)
    finally:
        conn.close()
        one.close()


if __name__ == "__main__":
    main()
