"""Parquet row groups decoded by polars, as pyarrow would have read them.

polars decodes Parquet about twice as fast as pyarrow on one core (1M rows of the batch job's
five columns: 65-75 against 96-136 ms of CPU, string columns most of the difference), and a keyed load
spends about half its time reading. So a worker reads a split with polars when the file holds
only flat columns whose values the two readers agree on exactly; the table is then cast to
the file's own Arrow schema (what `ParquetFile.read_row_group` returns: same types, names,
nullability and metadata). Anything else, or any failure, returns None and the caller reads
with pyarrow, whose errors name the file and row group.

polars is used only once it is imported: the worker imports it in the background when it is
idle after its first Parquet load (`workers/preload.py`), so a load never waits for the
import (0.35 s, about 30 MB per process) and a cluster that never loads Parquet never pays it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import pyarrow.parquet as pq

MAX_FOOTER_BYTES = 64 << 10
"""polars parses a file's footer again for every split (pyarrow's is parsed once per load and
shared): above this size (about 200 row groups of 5 columns) the splits stay with pyarrow."""


READER_ENV = "LAMINARDB_PARQUET_READER"
"""Set to `pyarrow` (in the caller's environment, which workers inherit) to read every
Parquet file with pyarrow."""


def ready() -> Any | None:
    """The polars module once fully imported (by any thread), else None (also when
    `READER_ENV` says pyarrow)."""
    if os.environ.get(READER_ENV) == "pyarrow":
        return None
    module = sys.modules.get("polars")
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def read_row_groups(f: pq.ParquetFile, path: str, groups: Sequence[int]) -> pa.Table | None:
    """Row groups `groups` (consecutive) of `f`, read by polars, with `f.schema_arrow`; None
    when polars is not imported yet, the file does not qualify (`qualifies`) or it fails."""
    pl = ready()
    if pl is None or not groups or list(groups) != list(range(groups[0], groups[-1] + 1)):
        return None
    if not qualifies(f):
        return None
    meta = f.metadata
    offset = sum(meta.row_group(i).num_rows for i in range(groups[0]))
    rows = sum(meta.row_group(i).num_rows for i in groups)
    try:
        frame = (
            pl.scan_parquet(path, glob=False, hive_partitioning=False).slice(offset, rows).collect()
        )
        data = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(f.schema_arrow)
    except (Exception, pl.exceptions.PanicException):  # a panic is a BaseException
        return None  # pyarrow reads it again and reports what is wrong
    return data if data.num_rows == rows else None


def qualifies(f: pq.ParquetFile) -> bool:
    """Whether every column of `f` is flat, of a type both readers give the same values
    for, and not stored as INT96 (legacy timestamps: left to pyarrow, their conversion is
    not checked against it here); and its footer is small (`MAX_FOOTER_BYTES`)."""
    if f.metadata.serialized_size > MAX_FOOTER_BYTES:
        return False
    if f.metadata.num_columns != len(f.schema_arrow):  # nested columns span several leaves
        return False
    if any(f.schema.column(i).physical_type == "INT96" for i in range(f.metadata.num_columns)):
        return False
    return all(_plain(field.type) for field in f.schema_arrow)


_PLAIN = (
    pa.types.is_integer,
    pa.types.is_float32,
    pa.types.is_float64,
    pa.types.is_boolean,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_date32,
    pa.types.is_timestamp,
)


def _plain(t: pa.DataType) -> bool:
    return any(bool(check(t)) for check in _PLAIN)
