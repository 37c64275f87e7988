"""Broadcast joins: a big relation joined with a small dimension, against one native instance.

`t` holds `--rows` rows (id, g, v), either spread round-robin or keyed on `id` (not the join
column); `d` is a dimension of `--dim` rows (g, cat, w) spread round-robin. Neither layout
lets the join run per worker as written, so before the broadcast rule every case went to
the gather path (all of `t` fetched into one engine). Each case is timed on one native
instance, on the cluster (broadcast plan) and on the cluster with broadcast turned off
(`broadcast.BROADCAST_ROWS = 0`: the gather path it replaces), interleaved, best and
median of `--repeat` runs after one warm-up (which fills the planner's caches), every
answer checked against the native one first. The broadcast plan reuses the small side and
the row counts while nothing is written (`Cluster.epoch`); "after a write" times the first
query after one (the epoch moved on, so both are fetched again). Ratios are cluster / native.

Usage: `.venv/bin/python -m benchmarks.broadcast_join [--rows 1000000] [--dim 10000]
[--workers 2] [--layout both|rr|key] [--repeat 5] [--json out.json]`
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
from laminardb.plan import broadcast, broadcast_run

DDL_T = "CREATE SOURCE {name} (id BIGINT, g BIGINT, v DOUBLE)"
DDL_D = "CREATE SOURCE d (g BIGINT, cat BIGINT, w DOUBLE)"

CASES = [
    (
        "join, selective filter on d",
        "SELECT {t}.id, {t}.v, d.cat FROM {t} JOIN d ON {t}.g = d.g WHERE d.w < 0.01",
    ),
    (
        "join, filter on both, top-10",
        "SELECT {t}.id, {t}.v, d.w FROM {t} JOIN d ON {t}.g = d.g WHERE {t}.v > 0.5 "
        "AND d.w > 0.5 ORDER BY {t}.v DESC LIMIT 10",
    ),
    (
        "join, group by d.cat (100 groups)",
        "SELECT d.cat, count(*), sum({t}.v) FROM {t} JOIN d ON {t}.g = d.g GROUP BY d.cat",
    ),
    (
        "left join, filter on t",
        "SELECT {t}.id, d.w FROM {t} LEFT JOIN d ON {t}.g = d.g WHERE {t}.v < 0.01",
    ),
    (
        "semi-join (IN sub-query on d)",
        "SELECT id, v FROM {t} WHERE g IN (SELECT g FROM d WHERE w < 0.01)",
    ),
]


def fact(rows: int, dim: int, batch: int) -> list[pa.Table]:
    """`rows` rows in batches: id 0..rows-1, g uniform over 0..2*dim (half match d), v uniform."""
    rng = np.random.default_rng(3)
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        out.append(
            pa.table(
                {
                    "id": pa.array(np.arange(start, start + n), pa.int64()),
                    "g": pa.array(rng.integers(0, 2 * dim, n), pa.int64()),
                    "v": pa.array(rng.random(n)),
                }
            )
        )
    return out


def dimension(dim: int) -> pa.Table:
    rng = np.random.default_rng(5)
    return pa.table(
        {
            "g": pa.array(np.arange(dim), pa.int64()),
            "cat": pa.array(rng.integers(0, 100, dim), pa.int64()),
            "w": pa.array(rng.random(dim)),
        }
    )


def _timings(conn: Any, sql: str, runs: list[float]) -> None:
    runs.append(timed(functools.partial(answer, conn, sql)))


def _after_a_write(cluster: Any, sql: str, runs: list[float]) -> None:
    """Time `sql` as the first query after a write: the epoch moves on (the data does not),
    so the row counts and the small side are fetched again."""
    with cluster._cluster.lock:
        cluster._cluster.epoch += 1
    _timings(cluster, sql, runs)


@click.command()
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--dim", default=10_000, show_default=True, help="rows of the dimension d")
@click.option("--workers", default=2, show_default=True)
@click.option("--layout", type=click.Choice(["both", "rr", "key"]), default="both")
@click.option("--repeat", default=5, show_default=True, help="timed runs per side and case")
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(
    rows: int, dim: int, workers: int, layout: str, repeat: int, json_path: str | None
) -> None:
    facts = {"rr": ("t", ""), "key": ("tk", " PARTITION BY (id)")}
    chosen = list(facts) if layout == "both" else [layout]
    single: Any = laminardb_native.open(":memory:")
    cluster: Any = laminardb.open(":memory:", workers=workers)
    figures: list[dict[str, Any]] = []
    threshold = broadcast.BROADCAST_ROWS
    try:
        single.execute(DDL_D)
        cluster.execute(DDL_D)
        single.insert("d", dimension(dim))
        cluster.insert("d", dimension(dim))
        for key in chosen:
            name, clause = facts[key]
            single.execute(DDL_T.format(name=name))
            cluster.execute(DDL_T.format(name=name) + clause)
            for b in fact(rows, dim, 1_000_000):
                single.insert(name, b)
                cluster.insert(name, b)
        for key in chosen:
            name = facts[key][0]
            for label, template in CASES:
                sql = template.format(t=name)
                expected = single.sql(sql).to_arrow()
                if not same(expected, cluster.sql(sql).to_arrow(), "ORDER BY" in sql):
                    raise SystemExit(f"answers differ for {sql}")
                with cluster._cluster.lock:
                    if broadcast_run._choose(sql, cluster._catalog, _fetch(cluster)) is None:
                        raise SystemExit(f"no broadcast plan for {sql}")
                native_ms: list[float] = []
                bcast_ms: list[float] = []
                gather_ms: list[float] = []
                written_ms: list[float] = []
                broadcast.BROADCAST_ROWS = 0
                answer(cluster, sql)  # warm the gather path too
                broadcast.BROADCAST_ROWS = threshold
                for _ in range(repeat):
                    _timings(single, sql, native_ms)
                    _timings(cluster, sql, bcast_ms)
                    _after_a_write(cluster, sql, written_ms)
                    broadcast.BROADCAST_ROWS = 0
                    try:
                        _timings(cluster, sql, gather_ms)
                    finally:
                        broadcast.BROADCAST_ROWS = threshold
                figures.append(
                    {
                        "layout": "round-robin" if key == "rr" else "keyed on id",
                        "case": label,
                        "sql": sql,
                        "native_best_ms": min(native_ms),
                        "broadcast_best_ms": min(bcast_ms),
                        "gather_best_ms": min(gather_ms),
                        "after_write_best_ms": min(written_ms),
                        "native_median_ms": statistics.median(native_ms),
                        "broadcast_median_ms": statistics.median(bcast_ms),
                        "gather_median_ms": statistics.median(gather_ms),
                        "result_rows": expected.num_rows,
                    }
                )
    finally:
        broadcast.BROADCAST_ROWS = threshold
        cluster.close()
        single.close()
    title = (
        f"{rows:,}-row t joined with a {dim:,}-row d, {workers} workers vs 1 native instance "
        f"({platform.node()})"
    )
    table = Table(title=title)
    for col in ("t layout", "case", "native ms", "broadcast ms", "ratio", "median ratio"):
        table.add_column(col, justify="left" if col in ("t layout", "case") else "right")
    for col in ("after a write ms", "ratio ", "gather ms", "gather ratio", "rows"):
        table.add_column(col, justify="right")
    for f in figures:
        table.add_row(
            f["layout"],
            f["case"],
            f"{f['native_best_ms']:.1f}",
            f"{f['broadcast_best_ms']:.1f}",
            f"{f['broadcast_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['broadcast_median_ms'] / f['native_median_ms']:.2f}x",
            f"{f['after_write_best_ms']:.1f}",
            f"{f['after_write_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['gather_best_ms']:.1f}",
            f"{f['gather_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['result_rows']:,}",
        )
    Console(width=170).print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump({"rows": rows, "dim": dim, "workers": workers, "figures": figures}, out)


def _fetch(cluster: Any) -> Any:
    from laminardb.plan import distributed

    return distributed.cluster_fetch(cluster._cluster)


if __name__ == "__main__":
    main()
