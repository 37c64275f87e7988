"""Workload 0: ingest to queryable, with no stream (the coordinator's own ingest path).

Reuses `benchmarks/ingest.py`'s data and DDL and times what its `run_case` times (insert
every batch, then wait until `SELECT count(*)` sees every row; the DDL runs before the clock
starts, so that the profile sees ingest only), so the figures match that script's. Cases: Arrow
tables of 65,536 rows and 100-row lists of dicts, keyed on 100,000 devices. This is the
workload to profile (`--profile --only ingest`) to see the coordinator's hashing, casting
and serialising costs, which the streaming workload's wait for results hides.
"""

from __future__ import annotations

from benchmarks import ingest as script
from benchmarks.harness.model import Measurement
from benchmarks.harness.targets import Context, Sizes, Target, failed, measurement

NAME = "ingest"
KEYS = 100_000
CASES = ("arrow, 65,536-row batches", "dicts, 100 rows per insert")


def cases(sizes: Sizes) -> list[str]:
    return list(CASES)


def run(target: Target, sizes: Sizes, ctx: Context) -> list[Measurement]:
    out = []
    for case in CASES:
        if case.startswith("arrow"):
            rows, data = sizes.ingest_rows, script.arrow_batches(sizes.ingest_rows, 65_536, KEYS)
        else:
            rows, data = (
                sizes.ingest_dict_rows,
                script.dict_batches(sizes.ingest_dict_rows, 100, KEYS),
            )
        conn = target.open()
        try:
            conn.execute(target.ddl(script.DDL, "device"))
            with ctx.timed(conn, target) as probe:
                for batch in data:
                    conn.insert("readings", batch)
                seen = conn.sql("SELECT count(*) FROM readings").fetchall()[0][0]
            if seen != rows:
                raise AssertionError(f"count(*) saw {seen:,} rows of {rows:,}")
            out.append(measurement(NAME, case, target, rows, probe))
        except Exception as exc:
            out.append(failed(NAME, case, target, exc))
        finally:
            conn.close()
        ctx.advance(f"{NAME}: {case}")
    return out
