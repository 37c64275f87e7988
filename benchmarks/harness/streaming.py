"""Workload 1: streaming ingest into a keyed tumbling-window aggregate.

The stream groups by the partition key and a 10 s tumbling window (`EMIT ON WINDOW CLOSE`),
which the cluster merges by union. Rows span 60 s of event time, with a watermark delay of
one hour so that no row is ever late, however inserts are coalesced. After the data, one
query makes the cluster ship what it buffered, then a final batch far in the future (one row
for each of up to 512 keys, so that every worker sees it) closes every window. The clock
stops when the subscriber has seen every input row counted (sum of `cnt` == rows): time to
results, never time for `insert()` to return.

Cases: Arrow batches and 100-row lists of dicts, each with 1k and 100k keys. Latency is the
duration of each `insert()` call.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.harness.model import Measurement
from benchmarks.harness.targets import Context, Sizes, Target, failed, measurement

NAME = "streaming"
SPAN_MS = 60_000
DDL = (
    "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1' HOUR)"
)
STREAM = (
    "CREATE STREAM per_device AS SELECT device, COUNT(*) AS cnt, SUM(value) AS total "
    "FROM ev GROUP BY device, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE"
)
DICT_BATCH = 100
FLUSH_KEYS = 512


def cases(sizes: Sizes) -> list[str]:
    return [f"{form}, {keys:,} keys" for form in ("arrow", "dicts") for keys in sizes.stream_keys]


def arrow_table(start: int, n: int, total: int, keys: int) -> pa.Table:
    """Rows start..start+n of `total`: ts rising over SPAN_MS, devices cycling over `keys`."""
    idx = np.arange(start, start + n, dtype=np.int64)
    device = pc.binary_join_element_wise("device-", pa.array(idx % keys).cast(pa.string()), "")
    return pa.table(
        {
            "ts": pa.array(idx * SPAN_MS // total),
            "device": device,
            "value": pa.array((idx & 1023).astype(np.float64)),
        }
    )


def batches(form: str, rows: int, batch: int, keys: int) -> list[Any]:
    """The case's inserts, prepared before the clock starts."""
    step = DICT_BATCH if form == "dicts" else batch
    out: list[Any] = []
    for start in range(0, rows, step):
        table = arrow_table(start, min(step, rows - start), rows, keys)
        out.append(table.to_pylist() if form == "dicts" else table)
    return out


def flush_batch(keys: int) -> pa.Table:
    n = min(keys, FLUSH_KEYS)
    return pa.table(
        {
            "ts": pa.array([SPAN_MS * 600] * n, pa.int64()),
            "device": [f"device-{i}" for i in range(n)],
            "value": pa.array([0.0] * n),
        }
    )


def run_case(
    conn: Any,
    target: Target,
    inserts: list[Any],
    keys: int,
    rows: int,
    ctx: Context,
    timeout_s: float,
) -> tuple[Any, list[float]]:
    conn.execute(target.ddl(DDL, "device"))
    conn.execute(STREAM)
    conn.start()
    sub = conn.subscribe_stream("per_device")
    flush = flush_batch(keys)
    latencies = []
    with ctx.timed(conn, target) as probe:
        for data in inserts:
            t0 = time.perf_counter()
            conn.insert("ev", data)
            latencies.append(time.perf_counter() - t0)
        conn.sql("SELECT count(*) FROM ev WHERE ts < 0")  # ship what the cluster buffered
        conn.insert("ev", flush)
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscriber saw {seen:,} of {rows:,} rows in {timeout_s:.0f} s")
            try:
                batch = sub.next_timeout(200)
            except Exception as exc:  # the native SubscriptionError on timeout
                if "timeout" not in str(exc).lower():
                    raise
                continue
            if batch is not None:
                seen += int(pc.sum(batch.to_arrow()["cnt"]).as_py() or 0)
    if seen != rows:
        raise AssertionError(f"subscriber saw {seen:,} rows, expected {rows:,}")
    sub.cancel()
    return probe, latencies


def run(target: Target, sizes: Sizes, ctx: Context) -> list[Measurement]:
    out = []
    for case in cases(sizes):
        form = case.split(",")[0]
        keys = int(case.split(", ")[1].split()[0].replace(",", ""))
        rows = sizes.stream_dict_rows if form == "dicts" else sizes.stream_rows
        inserts = batches(form, rows, sizes.stream_batch, keys)
        conn = target.open()
        try:
            probe, latencies = run_case(conn, target, inserts, keys, rows, ctx, sizes.timeout_s)
            out.append(measurement(NAME, case, target, rows, probe, latencies_s=latencies))
        except Exception as exc:
            out.append(failed(NAME, case, target, exc))
        finally:
            conn.close()
        ctx.advance(f"{NAME}: {case}")
    return out
