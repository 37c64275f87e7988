"""Projection and filter pushdown on the gather path, against one native instance.

`t` holds `--rows` rows (k, g, v, x, s) keyed on `k`; the queries below are answered by the
gather path (no planner rule splits them). Each case is timed on one native instance, on
the cluster with pushdown (`pushdown.ENABLED`, the default) and without it (every worker
returns `SELECT * FROM t`), interleaved, best and median of `--repeat` runs after one
warm-up; every answer is checked against the native one first. The rows and bytes the
workers send back (Arrow buffer sizes of the fetched tables) are counted per run. Ratios
are cluster / native.

Usage: `.venv/bin/python -m benchmarks.gather_pushdown [--rows 1000000] [--workers 2]
[--repeat 5] [--json out.json]`
"""

from __future__ import annotations

import functools
import json
import platform
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
from laminardb.plan import gather, pushdown

DDL = "CREATE SOURCE t (k BIGINT, g BIGINT, v DOUBLE, x DOUBLE, s VARCHAR)"

CASES = [
    (
        "approx_percentile_cont, WHERE v > 0.5",
        "SELECT g, approx_percentile_cont(v, 0.9) AS p FROM t WHERE v > 0.5 GROUP BY g",
    ),
    (
        "percentile_cont, WHERE x < 0.1",
        "SELECT g, percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS p FROM t "
        "WHERE x < 0.1 GROUP BY g",
    ),
    (
        "median in HAVING (no filter)",
        "SELECT g, median(v) AS m FROM t GROUP BY g HAVING median(v) > 0.5",
    ),
    (
        "stddev in an expression, WHERE s LIKE",
        "SELECT g, stddev(v) * 2 AS sd2 FROM t WHERE s LIKE 'a%' GROUP BY g",
    ),
]


def rows_of(rows: int, batch: int) -> list[pa.Table]:
    rng = np.random.default_rng(7)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        out.append(
            pa.table(
                {
                    "k": pa.array(np.arange(start, start + n), pa.int64()),
                    "g": pa.array(rng.integers(0, 100, n), pa.int64()),
                    "v": pa.array(rng.random(n)),
                    "x": pa.array(rng.random(n)),
                    "s": pa.array(words[rng.integers(0, len(words), n)].tolist(), pa.string()),
                }
            )
        )
    return out


def close(a: pa.Table, b: pa.Table, approximate: bool) -> bool:
    """`same`, or for an approximate aggregate (its t-digest depends on the order rows
    arrive in, in native too) the same groups with values within 1%."""
    if not approximate:
        return same(a, b, False)
    left, right = (
        a.sort_by([(a.column_names[0], "ascending")]),
        b.sort_by([(b.column_names[0], "ascending")]),
    )
    if left.schema != right.schema or left.column(0) != right.column(0):
        return False
    x, y = np.array(left.column(1).to_pylist()), np.array(right.column(1).to_pylist())
    return bool(np.allclose(x, y, rtol=1e-2))


class Counting:
    """The cluster's fetch, counting the rows and bytes that come back from workers."""

    def __init__(self, fetch: Any) -> None:
        self.fetch = fetch
        self.rows = 0
        self.bytes = 0

    def __call__(self, sql: str, home: int | None) -> pa.Table:
        table: pa.Table = self.fetch(sql, home)
        self.rows += table.num_rows
        self.bytes += table.nbytes
        return table


def _gathered(cluster: Any, sql: str) -> bool:
    seen: list[str] = []
    real = gather.run

    def spy(sql: str, tables: Any, catalog: Any, fetch: Any) -> pa.Table:
        seen.append(sql)
        return real(sql, tables, catalog, fetch)

    gather.run = spy
    try:
        answer(cluster, sql)
    finally:
        gather.run = real
    return bool(seen)


@click.command()
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--repeat", default=5, show_default=True, help="timed runs per side and case")
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(rows: int, workers: int, repeat: int, json_path: str | None) -> None:
    single: Any = laminardb_native.open(":memory:")
    cluster: Any = laminardb.open(":memory:", workers=workers)
    counting = Counting(cluster._fetch)
    cluster._fetch = counting
    figures: list[dict[str, Any]] = []
    try:
        single.execute(DDL)
        cluster.execute(DDL + " PARTITION BY (k)")
        for b in rows_of(rows, 1_000_000):
            single.insert("t", b)
            cluster.insert("t", b)
        for label, sql in CASES:
            expected = single.sql(sql).to_arrow()
            for enabled in (True, False):
                pushdown.ENABLED = enabled
                if not close(expected, cluster.sql(sql).to_arrow(), "approx" in sql):
                    raise SystemExit(f"answers differ for {sql} (pushdown {enabled})")
            pushdown.ENABLED = True
            if not _gathered(cluster, sql):
                raise SystemExit(f"not answered by the gather path: {sql}")
            native_ms: list[float] = []
            on_ms: list[float] = []
            off_ms: list[float] = []
            shipped: dict[bool, tuple[int, int]] = {}
            for _ in range(repeat):
                native_ms.append(timed(functools.partial(answer, single, sql)))
                for enabled, runs in ((True, on_ms), (False, off_ms)):
                    pushdown.ENABLED = enabled
                    counting.rows = counting.bytes = 0
                    runs.append(timed(functools.partial(answer, cluster, sql)))
                    shipped[enabled] = (counting.rows, counting.bytes)
            pushdown.ENABLED = True
            figures.append(
                {
                    "case": label,
                    "sql": sql,
                    "native_best_ms": min(native_ms),
                    "pushdown_best_ms": min(on_ms),
                    "no_pushdown_best_ms": min(off_ms),
                    "native_median_ms": statistics.median(native_ms),
                    "pushdown_median_ms": statistics.median(on_ms),
                    "no_pushdown_median_ms": statistics.median(off_ms),
                    "rows_back": shipped[True][0],
                    "bytes_back": shipped[True][1],
                    "rows_back_without": shipped[False][0],
                    "bytes_back_without": shipped[False][1],
                }
            )
    finally:
        pushdown.ENABLED = True
        cluster.close()
        single.close()
    title = (
        f"gather path, {rows:,} rows, {workers} workers vs 1 native instance ({platform.node()})"
    )
    table = Table(title=title)
    for col in ("case", "native ms", "pushdown ms", "ratio", "without ms", "ratio w/o"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for col in ("rows back", "MB back", "rows back w/o", "MB back w/o"):
        table.add_column(col, justify="right")
    for f in figures:
        table.add_row(
            f["case"],
            f"{f['native_best_ms']:.1f}",
            f"{f['pushdown_best_ms']:.1f}",
            f"{f['pushdown_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['no_pushdown_best_ms']:.1f}",
            f"{f['no_pushdown_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['rows_back']:,}",
            f"{f['bytes_back'] / 1e6:.1f}",
            f"{f['rows_back_without']:,}",
            f"{f['bytes_back_without'] / 1e6:.1f}",
        )
    Console(width=170).print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump({"rows": rows, "workers": workers, "figures": figures}, out)


if __name__ == "__main__":
    main()
