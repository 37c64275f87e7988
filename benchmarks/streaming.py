"""Streaming aggregation: one native instance against the cluster, same data, same run.

A 100,000-key GROUP BY over a 1-second tumbling window (EMIT ON WINDOW CLOSE) is fed the
same rows on both sides, as Arrow 8k-row batches and as 100-row lists of dicts, and timed
from the first insert until a subscriber has received every result row (the count of
(window, key) pairs that the final watermark closes, known in advance), so neither side's
buffering can flatter it. Then the end-to-end latency: with the pipeline idle, one insert
closes a window and the time until the subscriber holds that window's row is taken, many
times (median and p99), on both sides.

A third figure runs the workers' partial SQL on one native instance (Arrow batches even for
the dicts case, as the cluster's coalescing delivers them), to show what the rewrite alone
buys against what the second worker does.

Usage: `.venv/bin/python -m benchmarks.streaming [--rows N] [--workers 2] [--json out.json]`.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import click
import laminardb_native
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

import laminardb
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.streams import merge

KEYS = 100_000
WINDOW_MS = 1000
SOURCE = (
    "CREATE SOURCE ev (ts BIGINT, k BIGINT, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND){partition}"
)
STREAM = (
    "CREATE STREAM agg AS SELECT k, tumble(ts, INTERVAL '1' SECOND) AS ws, COUNT(*) AS n, "
    "SUM(value) AS total FROM ev GROUP BY k, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE"
)
SCHEMA = pa.schema([("ts", pa.int64()), ("k", pa.int64()), ("value", pa.float64())])


def make_rows(rows: int, rate: int, seed: int = 1) -> pa.Table:
    """`rows` rows at `rate` rows per second of event time, keys uniform over KEYS, in order."""
    rng = np.random.default_rng(seed)
    ts = (np.arange(rows, dtype=np.int64) * 1000) // rate
    keys = rng.integers(0, KEYS, rows, dtype=np.int64)
    values = rng.integers(0, 100, rows).astype(np.float64)
    return pa.table([ts, keys, values], schema=SCHEMA)


def closing_row(table: pa.Table) -> pa.Table:
    """One row far enough ahead that the watermark closes every window of `table`."""
    last = int(table.column("ts")[-1].as_py()) + 3 * WINDOW_MS
    return pa.table([[last], [0], [0.0]], schema=SCHEMA)


def expected_rows(table: pa.Table) -> int:
    """(window, key) pairs: the rows the stream emits once every window is closed."""
    ts = table.column("ts").to_numpy()
    keys = table.column("k").to_numpy()
    return len(np.unique((ts // WINDOW_MS) * (KEYS + 1) + keys))


def chunks(table: pa.Table, size: int, as_dicts: bool) -> list[Any]:
    out: list[Any] = []
    for start in range(0, table.num_rows, size):
        part = table.slice(start, size)
        out.append(part.to_pylist() if as_dicts else part)
    return out


def open_db(workers: int | None) -> Any:
    conn: Any
    if workers is None:
        conn = laminardb_native.open(":memory:")
        conn.execute(SOURCE.format(partition=""))
    else:
        conn = laminardb.open(":memory:", workers=workers)
        conn.execute(SOURCE.format(partition=" PARTITION BY (k)"))
    conn.execute(STREAM)
    return conn


def read_rows(sub: Any, want: int, timeout_s: float) -> int:
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < want and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(200)
        except Exception as exc:  # the native and our SubscriptionError (timeout)
            if getattr(exc, "code", None) != 502:
                raise
            continue
        if batch is not None:
            got += batch.num_rows
    return got


def throughput(workers: int | None, batches: list[Any], tail: pa.Table, want: int) -> float:
    """Seconds from the first insert until the subscriber has every result row."""
    conn = open_db(workers)
    try:
        sub = conn.subscribe_stream("agg")
        conn.start()
        started = time.perf_counter()
        for batch in batches:
            conn.insert("ev", batch)
        conn.insert("ev", tail)
        got = read_rows(sub, want, timeout_s=300)
        elapsed = time.perf_counter() - started
        if got != want:
            side = "native" if workers is None else f"cluster({workers})"
            raise RuntimeError(f"{side}: the subscriber got {got} of {want} rows")
        return elapsed
    finally:
        conn.close()


def partial_on_one_instance(batches: list[Any], tail: pa.Table, rows: int) -> float:
    """Seconds for one native instance running the workers' partial SQL over the same batches,
    until its output accounts for every row: what the rewrite alone buys, on one core."""
    source = SOURCE.format(partition="")
    catalog = Catalog()
    catalog.add(Relation("ev", "source", SCHEMA, source, (), "ts"))
    planned = merge.plan("agg", STREAM, catalog)
    assert isinstance(planned, merge.MergePlan), planned
    conn = laminardb_native.open(":memory:")
    try:
        conn.execute(source)
        conn.execute(f"CREATE STREAM agg AS {planned.partial_sql}")
        sub = conn.subscribe_stream("agg")
        conn.start()
        started = time.perf_counter()
        for batch in batches:
            conn.insert("ev", batch)
        conn.insert("ev", tail)
        seen = 0
        deadline = time.monotonic() + 300
        while seen < rows + tail.num_rows and time.monotonic() < deadline:
            try:
                result = sub.next_timeout(200)
            except Exception as exc:
                if getattr(exc, "code", None) != 502:
                    raise
                continue
            if result is not None:
                seen += int(pc.sum(result.to_arrow().column("__n")).as_py() or 0)
        return time.perf_counter() - started
    finally:
        conn.close()


def latency(workers: int | None, probes: int) -> list[float]:
    """Seconds from the insert that closes a window until its row reaches the subscriber."""
    conn = open_db(workers)
    out: list[float] = []
    try:
        sub = conn.subscribe_stream("agg")
        conn.start()
        now = 0
        for _ in range(probes + 1):
            conn.insert("ev", pa.table([[now], [7], [1.0]], schema=SCHEMA))  # opens a window
            now += 2 * WINDOW_MS + 1  # this row's watermark closes it
            began = time.perf_counter()
            conn.insert("ev", pa.table([[now], [7], [1.0]], schema=SCHEMA))  # one key: one row
            if read_rows(sub, 1, timeout_s=30) != 1:
                raise RuntimeError("a closed window never arrived")
            out.append(time.perf_counter() - began)
            now += 1
        return out[1:]  # the first pays for warming up
    finally:
        conn.close()


def median_of(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


@click.command()
@click.option("--rows", default=1_000_000, show_default=True, help="rows of the Arrow case")
@click.option("--dict-rows", default=100_000, show_default=True, help="rows of the dicts case")
@click.option("--rate", default=200_000, show_default=True, help="rows per event-time second")
@click.option("--workers", default=2, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="runs per case (median reported)")
@click.option("--probes", default=50, show_default=True, help="latency samples per side")
@click.option("--json", "json_path", default=None, help="also write the figures here")
def main(
    rows: int,
    dict_rows: int,
    rate: int,
    workers: int,
    repeat: int,
    probes: int,
    json_path: str | None,
) -> None:
    console = Console()
    figures: dict[str, Any] = {"machine": platform.platform(), "workers": workers}
    table = Table(title=f"streaming GROUP BY {KEYS:,} keys, 1 s tumbling window, EOWC")
    columns = (
        "case",
        "rows",
        "native s",
        f"cluster({workers}) s",
        "speed-up",
        "partial SQL, 1 native s",
    )
    for column in columns:
        table.add_column(column)
    for case, n, size, as_dicts in (
        ("Arrow 8k-row batches", rows, 8192, False),
        ("100-row list of dicts", dict_rows, 100, True),
    ):
        data = make_rows(n, rate)
        tail = closing_row(data)
        want = expected_rows(data)
        batches = chunks(data, size, as_dicts)
        base = median_of(repeat, functools.partial(throughput, None, batches, tail, want))
        ours = median_of(repeat, functools.partial(throughput, workers, batches, tail, want))
        arrow_batches = batches if not as_dicts else chunks(data, size, False)
        alone = median_of(
            repeat, functools.partial(partial_on_one_instance, arrow_batches, tail, n)
        )
        figures[case] = {
            "rows": n,
            "results": want,
            "native_s": base,
            "cluster_s": ours,
            "partial_sql_one_native_s": alone,
        }
        table.add_row(
            case, f"{n:,}", f"{base:.2f}", f"{ours:.2f}", f"{base / ours:.2f}x", f"{alone:.2f}"
        )
    console.print(table)
    lat = Table(title="insert -> subscriber latency (a window-closing insert)")
    for column in ("side", "median ms", "p99 ms"):
        lat.add_column(column)
    for side, w in (("native", None), (f"cluster({workers})", workers)):
        samples = sorted(latency(w, probes))
        p50 = statistics.median(samples) * 1000
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
        figures[f"latency_{side}"] = {"median_ms": p50, "p99_ms": p99}
        lat.add_row(side, f"{p50:.1f}", f"{p99:.1f}")
    console.print(lat)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
