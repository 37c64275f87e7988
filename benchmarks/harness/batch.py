"""Workload 3: a single-host batch job: load a file, run a report query, write the result.

The files (CSV and Parquet, same rows) are generated once per run in the runner's work
folder. One job = load the file into a fresh source (created before the clock starts), run
the report query, write its answer to Parquet; the clock covers all three. One native
instance loads through pyarrow (read, insert); the cluster uses `conn.load` where the
Connection has it (parallel reads in the workers), else the same pyarrow path. DuckDB and
polars run the same job as outside references when they are importable (`references`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.harness.model import Measurement
from benchmarks.harness.probes import Probe
from benchmarks.harness.targets import Context, Sizes, Target, failed, measurement

NAME = "batch job"
FORMATS = ("csv", "parquet")
SCHEMA = pa.schema(
    [("id", pa.int64()), ("k", pa.int64()), ("cat", pa.string()), ("v", pa.float64())]
)
DDL = "CREATE SOURCE t (id BIGINT, k BIGINT, cat VARCHAR, v DOUBLE)"
REPORT = (
    "SELECT cat, count(*) AS n, sum(v) AS total, avg(v) AS mean, max(k) AS top_k "
    "FROM t GROUP BY cat ORDER BY cat LIMIT 1000"
)
CHUNK = 1_000_000


def cases(sizes: Sizes) -> list[str]:
    return list(FORMATS)


def files(sizes: Sizes, ctx: Context) -> dict[str, str]:
    """The generated input files (made once per run): format -> path."""
    made: dict[str, str] | None = ctx.extras.get("batch_files")
    if made is not None:
        return made
    paths = {fmt: os.path.join(ctx.workdir, f"input.{fmt}") for fmt in FORMATS}
    with pq.ParquetWriter(paths["parquet"], SCHEMA) as pw:
        csv_writer = pacsv.CSVWriter(paths["csv"], SCHEMA)
        try:
            for start in range(0, sizes.batch_rows, CHUNK):
                idx = np.arange(start, min(start + CHUNK, sizes.batch_rows), dtype=np.int64)
                cats = pa.array(idx % 20).cast(pa.string())
                table = pa.table(
                    {
                        "id": idx,
                        "k": idx % 100_000,
                        "cat": pc.binary_join_element_wise("cat-", cats, ""),
                        "v": ((idx * 37) % 10_007).astype(np.float64) / 4.0,
                    },
                    schema=SCHEMA,
                )
                pw.write_table(table, row_group_size=256_000)
                csv_writer.write_table(table)
        finally:
            csv_writer.close()
    ctx.extras["batch_files"] = paths
    return paths


def read_arrow(path: str, fmt: str) -> pa.Table:
    if fmt == "csv":
        opts = pacsv.ConvertOptions(column_types=SCHEMA)
        return pacsv.read_csv(path, convert_options=opts)
    return pq.read_table(path, schema=SCHEMA)


def job(conn: Any, target: Target, path: str, fmt: str, out: str) -> tuple[int, str]:
    """Load, report, write (the source exists); returns the rows loaded and how."""
    if hasattr(conn, "load"):
        loaded = int(conn.load("t", path))
        how = "load()"
    else:
        loaded = int(conn.insert("t", read_arrow(path, fmt)))
        how = "pyarrow + insert"
    answer = conn.sql(REPORT).to_arrow()
    pq.write_table(answer, out)
    return loaded, how


def run(target: Target, sizes: Sizes, ctx: Context) -> list[Measurement]:
    out = []
    paths = files(sizes, ctx)
    for fmt in FORMATS:
        conn = target.open()
        try:
            conn.execute(target.ddl(DDL, "k"))  # before the clock: a fresh cluster's first
            # statement waits for its workers to be ready, which is not the job's cost
            with ctx.timed(conn, target) as probe:
                loaded, how = job(conn, target, paths[fmt], fmt, os.path.join(ctx.workdir, "o.pq"))
            note = how if loaded == sizes.batch_rows else f"{how}: loaded {loaded:,} rows"
            out.append(measurement(NAME, fmt, target, sizes.batch_rows, probe, note=note))
        except Exception as exc:
            out.append(failed(NAME, fmt, target, exc))
        finally:
            conn.close()
        ctx.advance(f"{NAME}: {fmt}")
    return out


def _duckdb(path: str, fmt: str, out: str) -> None:
    import duckdb

    con = duckdb.connect()
    try:
        reader = (
            f"read_csv('{path}', header = true, columns = "
            "{'id': 'BIGINT', 'k': 'BIGINT', 'cat': 'VARCHAR', 'v': 'DOUBLE'})"
            if fmt == "csv"
            else f"read_parquet('{path}')"
        )
        con.execute(f"CREATE TABLE t AS SELECT * FROM {reader}")
        con.execute(f"COPY ({REPORT}) TO '{out}' (FORMAT parquet)")
    finally:
        con.close()


def _polars(path: str, fmt: str, out: str) -> None:
    import polars as pl

    schema = {"id": pl.Int64, "k": pl.Int64, "cat": pl.String, "v": pl.Float64}
    df = pl.read_csv(path, schema=schema) if fmt == "csv" else pl.read_parquet(path)
    report = (
        df.group_by("cat")
        .agg(
            pl.len().alias("n"),
            pl.col("v").sum().alias("total"),
            pl.col("v").mean().alias("mean"),
            pl.col("k").max().alias("top_k"),
        )
        .sort("cat")
    )
    report.write_parquet(out)


REFERENCES = {"duckdb": _duckdb, "polars": _polars}


def references(sizes: Sizes, ctx: Context) -> list[Measurement]:
    """The same job on DuckDB and polars, each where importable."""
    out = []
    paths = files(sizes, ctx)
    for name, job_fn in REFERENCES.items():
        if importlib.util.find_spec(name) is None:
            continue
        target = Target(name)
        for fmt in FORMATS:
            try:
                probe = Probe()
                with probe.timed():
                    job_fn(paths[fmt], fmt, os.path.join(ctx.workdir, f"{name}.pq"))
                out.append(measurement(NAME, fmt, target, sizes.batch_rows, probe))
            except Exception as exc:
                out.append(failed(NAME, fmt, target, exc))
            ctx.advance(f"{NAME}: {fmt} on {name}")
    return out


def reference_steps(sizes: Sizes) -> int:
    return len(FORMATS) * sum(importlib.util.find_spec(n) is not None for n in REFERENCES)
