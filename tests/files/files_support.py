"""Helpers of the file-ingestion tests: sample rows, file writers, the native answer, and our
load segments in /dev/shm."""

from __future__ import annotations

import datetime
import itertools
import json
import os
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

_ids = itertools.count()

COLUMNS = "ts TIMESTAMP, device VARCHAR, n BIGINT, value DOUBLE, ok BOOLEAN"
SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us")),
        ("device", pa.string()),
        ("n", pa.int64()),
        ("value", pa.float64()),
        ("ok", pa.bool_()),
    ]
)


def fresh(prefix: str) -> str:
    """A source name no other test uses."""
    return f"{prefix}_{next(_ids)}"


def sample(rows: int, seed: int = 0) -> pa.Table:
    """Rows of every column kind, with NULLs, of exactly SCHEMA."""
    base = datetime.datetime(2024, 1, 1)
    return pa.table(
        {
            "ts": [base + datetime.timedelta(seconds=i * 7 + seed) for i in range(rows)],
            "device": [None if i % 17 == 3 else f"dev{(i * 31 + seed) % 23}" for i in range(rows)],
            "n": [None if i % 11 == 5 else i * 3 - seed for i in range(rows)],
            "value": [i * 0.25 + seed for i in range(rows)],
            "ok": [None if i % 13 == 0 else i % 2 == 0 for i in range(rows)],
        },
        schema=SCHEMA,
    )


def write(table: pa.Table, path: str, fmt: str) -> str:
    """`table` as a file of format `fmt` at `path` (Parquet with small row groups)."""
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=max(1, table.num_rows // 5))
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        with open(path, "w") as f:
            for row in table.to_pylist():
                row["ts"] = row["ts"].isoformat(sep=" ")
                f.write(json.dumps(row) + "\n")
    return path


EXT = {"parquet": "parquet", "csv": "csv", "json": "ndjson"}


def native_rows(ddl: str, name: str, data: pa.Table, sql: str) -> list[tuple[Any, ...]]:
    """`sql` on one native instance holding `data` (exact Arrow, via insert) in `name`."""
    conn = native.open(":memory:")
    try:
        conn.execute(ddl)
        if data.num_rows:
            conn.insert(name, data)
        return conn.sql(sql).fetchall()  # type: ignore[no-any-return]
    finally:
        conn.close()


def shm_of_ours() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"laminardb-{os.getpid()}-load")]
