"""Workload 2: ad-hoc queries on a keyed source (1e6 rows with --quick, 1e7 otherwise).

`events (id, k, g, m, v)` is partitioned by `k` (100,000 keys); `dims (k, region)` by the
same key, so the join is co-partitioned. Data is loaded in 100,000-row Arrow batches before
the clock starts. Each query runs once to warm up, then `repeat` times; latency is per call
and rows/s is the rows of `events` scanned per second. Each answer is compared with the
native instance's (`same`) and a difference is flagged in the note.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.harness.model import NATIVE, Measurement
from benchmarks.harness.targets import Context, Sizes, Target, failed, measurement

NAME = "queries"
KEYS = 100_000
BATCH = 100_000
EVENTS = "CREATE SOURCE events (id BIGINT, k BIGINT, g BIGINT, m BIGINT, v DOUBLE)"
DIMS = "CREATE SOURCE dims (k BIGINT, region VARCHAR)"
QUERIES = {
    "point lookup": "SELECT id, v FROM events WHERE k = 4242",
    "group by, 10 groups": "SELECT g, count(*) AS n, sum(v) AS s FROM events GROUP BY g",
    "group by, 100k groups": "SELECT m, count(*) AS n, sum(v) AS s FROM events GROUP BY m",
    "global aggregate": "SELECT count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, "
    "avg(v) AS mean FROM events",
    "top-10": "SELECT id, v FROM events ORDER BY v DESC, id LIMIT 10",
    "co-partitioned join": "SELECT d.region, count(*) AS n, sum(e.v) AS s FROM events e "
    "JOIN dims d ON e.k = d.k GROUP BY d.region",
}


def cases(sizes: Sizes) -> list[str]:
    return list(QUERIES)


def events(start: int, n: int) -> pa.Table:
    idx = np.arange(start, start + n, dtype=np.int64)
    return pa.table(
        {
            "id": idx,
            "k": idx % KEYS,
            "g": idx % 10,
            "m": (idx * 7919) % KEYS,
            "v": ((idx * 37) % 1_000_003).astype(np.float64) / 8.0,
        }
    )


def dims() -> pa.Table:
    k = np.arange(KEYS, dtype=np.int64)
    return pa.table({"k": k, "region": pa.array([f"region-{i % 16}" for i in range(KEYS)])})


def _canonical(table: pa.Table) -> list[tuple[Any, ...]]:
    rows = [
        tuple(round(v, 6) if isinstance(v, float) else v for v in row.values())
        for row in table.to_pylist()
    ]
    return sorted(rows, key=repr)


def same(expected: pa.Table, found: pa.Table, ordered: bool) -> bool:
    """Whether two answers hold the same rows: the planner benchmark's check where it exists
    (types, then values with floats to 1e-9 relative), else sorted rows, floats rounded."""
    try:
        from benchmarks.queries import same as planner_same
    except Exception:  # not there (or mid-edit): fall back to our own check
        return _canonical(expected) == _canonical(found)
    return bool(planner_same(expected, found, ordered))


def load(conn: Any, target: Target, rows: int) -> None:
    conn.execute(target.ddl(EVENTS, "k"))
    conn.execute(target.ddl(DIMS, "k"))
    for start in range(0, rows, BATCH):
        conn.insert("events", events(start, min(BATCH, rows - start)))
    conn.insert("dims", dims())
    conn.sql("SELECT count(*) FROM events")  # the cluster ships what it buffered


def run(target: Target, sizes: Sizes, ctx: Context) -> list[Measurement]:
    out = []
    answers: dict[str, pa.Table] = ctx.extras.setdefault(NAME, {})
    conn = target.open()
    try:
        try:
            load(conn, target, sizes.query_rows)
        except Exception as exc:
            for case in QUERIES:
                out.append(failed(NAME, case, target, exc))
                ctx.advance(f"{NAME}: {case}")
            return out
        for case, sql in QUERIES.items():
            try:
                answer = conn.sql(sql).to_arrow()  # warm-up, and the answer
                if target.kind == NATIVE:
                    answers[case] = answer
                note = ""
                if case in answers and not same(answers[case], answer, "ORDER BY" in sql):
                    note = "answer differs from native"
                latencies = []
                with ctx.timed(conn, target) as probe:
                    for _ in range(sizes.query_repeat):
                        t0 = time.perf_counter()
                        conn.sql(sql).to_arrow()
                        latencies.append(time.perf_counter() - t0)
                rows = sizes.query_rows * sizes.query_repeat
                out.append(
                    measurement(NAME, case, target, rows, probe, latencies_s=latencies, note=note)
                )
            except Exception as exc:
                out.append(failed(NAME, case, target, exc))
            ctx.advance(f"{NAME}: {case}")
    finally:
        conn.close()
    return out
