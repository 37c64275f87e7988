"""Query latency: the cluster (2 workers) against one native instance, same data, same run.

Cases (issue 3): GROUP BY a non-key column with 100 and with 100,000 groups, a global
count/sum, a top-10 by an aggregate, a point lookup on the partition key, and joins of `t`
with `d` (rows/2 rows), both `PARTITION BY (id)`, that run per worker (co-partitioned). Each query
runs `--repeat` times on each side, interleaved, after one warm-up run (which also fills the
planner's plan and probe caches, as a repeated dashboard query would); the table shows the
best and the median wall time in ms and their ratio cluster / native. Each answer is checked
against the native one first. For the two-phase cases it also shows the bytes the workers
sent back (their partials, rows and bytes) against the final result's (the issue's bound:
2 x the result plus one row per group per worker).

Usage: `.venv/bin/python -m benchmarks.queries [--rows 1000000] [--big] [--workers 2]`
(`--big` means 1e7 rows).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import click
import laminardb_native
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

import laminardb
from laminardb.plan import distributed, extended
from laminardb.plan.joinagg import JoinAggPlan

DDL = "CREATE SOURCE t (id BIGINT, g100 BIGINT, g100k BIGINT, v DOUBLE)"
DDL_D = "CREATE SOURCE d (id BIGINT, w DOUBLE)"

CASES = [
    ("group by, 100 groups", "SELECT g100, count(*), sum(v) FROM t GROUP BY g100"),
    ("group by, 100k groups", "SELECT g100k, count(*), sum(v) FROM t GROUP BY g100k"),
    ("global count/sum", "SELECT count(*), sum(v) FROM t"),
    (
        "top-10 by sum",
        "SELECT g100k, sum(v) AS s FROM t GROUP BY g100k ORDER BY s DESC LIMIT 10",
    ),
    ("point lookup on key", "SELECT * FROM t WHERE id = 424242"),
    ("join on key, filter", "SELECT t.id, t.v, d.w FROM t JOIN d ON t.id = d.id WHERE d.w > 0.999"),
    (
        "join on key, group by key, top-10",
        "SELECT t.id, count(*) AS n, sum(d.w) AS s FROM t JOIN d ON t.id = d.id"
        " GROUP BY t.id ORDER BY s DESC LIMIT 10",
    ),
    (
        "join on key, group by non-key (100 groups)",
        "SELECT t.g100, count(*), sum(d.w) FROM t JOIN d ON t.id = d.id GROUP BY t.g100",
    ),
    (
        "left join on key, top-10",
        "SELECT t.id, t.v, d.w FROM t LEFT JOIN d ON t.id = d.id ORDER BY t.v DESC LIMIT 10",
    ),
]


def side(rows: int, batch: int) -> list[pa.Table]:
    """The join's other side: id 0..rows-1 and a uniform double `w`."""
    rng = np.random.default_rng(11)
    return [
        pa.table(
            {
                "id": pa.array(np.arange(start, min(start + batch, rows)), pa.int64()),
                "w": pa.array(rng.random(min(batch, rows - start))),
            }
        )
        for start in range(0, rows, batch)
    ]


def data(rows: int, batch: int) -> list[pa.Table]:
    """Deterministic rows in batches of `batch`: id 0..rows-1 (the key), two group columns."""
    rng = np.random.default_rng(7)
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        out.append(
            pa.table(
                {
                    "id": pa.array(np.arange(start, start + n), pa.int64()),
                    "g100": pa.array(rng.integers(0, 100, n), pa.int64()),
                    "g100k": pa.array(rng.integers(0, 100_000, n), pa.int64()),
                    "v": pa.array(rng.random(n)),
                }
            )
        )
    return out


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def answer(conn: Any, sql: str) -> pa.Table:
    """The Arrow answer of `sql` (what is timed)."""
    table: pa.Table = conn.sql(sql).to_arrow()
    return table


def same(a: pa.Table, b: pa.Table, ordered: bool) -> bool:
    """Whether two answers hold the same rows (floats to 1e-9 relative)."""
    if a.schema.types != b.schema.types or a.num_rows != b.num_rows:
        return False
    left, right = a.to_pylist(), b.to_pylist()
    if not ordered:
        left = sorted(left, key=lambda r: tuple(map(str, r.values())))
        right = sorted(right, key=lambda r: tuple(map(str, r.values())))
    for x, y in zip(left, right, strict=True):
        for u, w in zip(x.values(), y.values(), strict=True):
            if isinstance(u, float) and isinstance(w, float):
                if not math.isclose(u, w, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif u != w:
                return False
    return True


def partial_bytes(conn: Any, sql: str) -> tuple[int, int] | None:
    """Bytes and rows the workers send back for `sql` under its distributed plan."""
    found = distributed.cached_plan(sql, conn._catalog)
    worker_sql = None if found is None or found.merge_sql is None else found.worker_sql
    joined = extended.cached_plan(sql, conn._catalog) if found is None else None
    if isinstance(joined, JoinAggPlan):  # two-phase over a co-partitioned join
        worker_sql = extended.join_aggregate_plan(joined, conn._catalog)[2]
    if worker_sql is None:
        return None
    parts = distributed.cluster_fetch(conn._cluster)(worker_sql, None)
    return sum(p.nbytes for p in parts), sum(p.num_rows for p in parts)


@click.command()
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--big", is_flag=True, help="1e7 rows")
@click.option("--workers", default=2, show_default=True)
@click.option("--repeat", default=7, show_default=True, help="timed runs per side and case")
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(rows: int, big: bool, workers: int, repeat: int, json_path: str | None) -> None:
    rows = 10_000_000 if big else rows
    batches = data(rows, 1_000_000)
    console = Console(width=150)
    single: Any = laminardb_native.open(":memory:")
    cluster: Any = laminardb.open(":memory:", workers=workers)
    figures: list[dict[str, Any]] = []
    try:
        single.execute(DDL)
        cluster.execute(DDL + " PARTITION BY (id)")
        single.execute(DDL_D)
        cluster.execute(DDL_D + " PARTITION BY (id)")
        for b in batches:
            single.insert("t", b)
            cluster.insert("t", b)
        for b in side(rows // 2, 1_000_000):
            single.insert("d", b)
            cluster.insert("d", b)
        assert cluster.sql("SELECT count(*) FROM t").fetchall() == [(rows,)]
        for label, sql in CASES:
            expected = single.sql(sql).to_arrow()
            found = cluster.sql(sql).to_arrow()
            if not same(expected, found, "ORDER BY" in sql):
                raise SystemExit(f"answers differ for {sql}")
            mine: list[float] = []
            theirs: list[float] = []
            for _ in range(repeat):
                theirs.append(timed(functools.partial(answer, single, sql)))
                mine.append(timed(functools.partial(answer, cluster, sql)))
            shipped = partial_bytes(cluster, sql)
            figures.append(
                {
                    "case": label,
                    "sql": sql,
                    "native_best_ms": min(theirs),
                    "cluster_best_ms": min(mine),
                    "native_median_ms": statistics.median(theirs),
                    "cluster_median_ms": statistics.median(mine),
                    "result_bytes": expected.nbytes,
                    "result_rows": expected.num_rows,
                    "partial_bytes": None if shipped is None else shipped[0],
                    "partial_rows": None if shipped is None else shipped[1],
                }
            )
    finally:
        cluster.close()
        single.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    title = (
        f"{rows:,} rows, {workers} workers vs 1 native instance ({platform.node()}, "
        f"load average {load})"
    )
    table = Table(title=title)
    for name in ("case", "native ms", "cluster ms", "ratio", "median ratio", "partials B (rows)"):
        table.add_column(name, justify="left" if name == "case" else "right")
    table.add_column("result B (rows)", justify="right")
    for f in figures:
        back = "-"
        if f["partial_bytes"] is not None:
            back = f"{f['partial_bytes']:,} ({f['partial_rows']:,})"
        table.add_row(
            f["case"],
            f"{f['native_best_ms']:.1f}",
            f"{f['cluster_best_ms']:.1f}",
            f"{f['cluster_best_ms'] / f['native_best_ms']:.2f}x",
            f"{f['cluster_median_ms'] / f['native_median_ms']:.2f}x",
            back,
            f"{f['result_bytes']:,} ({f['result_rows']:,})",
        )
    console.print(table)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(
                {"rows": rows, "workers": workers, "load": os.getloadavg(), "figures": figures},
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
