"""Writing query results to Parquet, CSV or NDJSON files, whole or as a folder of parts.

A path that ends with a slash, or names an existing folder, is a folder: when the query is a
plain per-worker projection/filter of one sharded source (no aggregate, sort, limit,
distinct, window, join or subquery: its answer is exactly the union of every worker's
answer), each worker writes its own rows to its own `part-<shard>.<ext>` (request
`WriteQuery`, workers/files.py: the rows never pass through the coordinator); any other
query writes its
one exact result to `part-0.<ext>`. Otherwise one file is written, compressed when its name
ends in .gz/.zst/.bz2 (CSV and JSON).
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from laminardb.api.errors import QueryError, codes
from laminardb.files.options import FileOptions, compression_of, resolve
from laminardb.plan import statements

if TYPE_CHECKING:
    from laminardb.cluster.catalog import Catalog

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "ndjson"}
_NOT_PLAIN = (exp.AggFunc, exp.Window, exp.Join, exp.Subquery, exp.Order, exp.Limit, exp.Offset)


def is_folder(path: str) -> bool:
    return path.endswith(("/", os.sep)) or os.path.isdir(path)


def write_table(table: pa.Table, path: str, opts: FileOptions) -> int:
    """Write `table` to the file `path` in `opts.format`; returns the rows written."""
    try:
        if opts.format == "parquet":
            pq.write_table(table, path)
        else:
            compression = compression_of(path)
            with pa.output_stream(path, compression=compression) as sink:
                if opts.format == "csv":
                    options = pacsv.WriteOptions(
                        include_header=opts.header, delimiter=opts.delimiter
                    )
                    pacsv.write_csv(table, sink, options)
                else:
                    _write_ndjson(table, sink)
    except (OSError, pa.ArrowException) as exc:
        raise QueryError(
            f"Query failed ({codes.QUERY_FAILED}): cannot write {path!r}: {exc}",
            code=codes.QUERY_FAILED,
        ) from None
    return int(table.num_rows)


def write_result(table: pa.Table, path: str, fmt: str, **options: Any) -> int:
    """`QueryResult.write_*`: one file, or `part-0` in a folder (the result is already whole)."""
    if is_folder(path):
        return write_parts([table], path, resolve(f"x.{fmt}", fmt, options))
    return write_table(table, path, resolve(path, fmt, options))


def write_parts(parts: list[pa.Table], folder: str, opts: FileOptions) -> int:
    """Write one `part-<i>` file per table into `folder` (created if needed)."""
    make_folder(folder)
    return sum(write_table(part, part_path(folder, i, opts), opts) for i, part in enumerate(parts))


def make_folder(folder: str) -> None:
    """Create `folder` (and its parents) if needed; a QueryError naming it when that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise QueryError(
            f"Query failed ({codes.QUERY_FAILED}): cannot create folder {folder!r}: {exc}",
            code=codes.QUERY_FAILED,
        ) from None


def part_path(folder: str, part: int, opts: FileOptions) -> str:
    """The file of part `part` (a worker's shard) in `folder`: `part-<part>.<ext>`."""
    return os.path.join(os.path.abspath(folder), f"part-{part}.{EXTENSIONS[opts.format]}")


def per_worker_source(sql: str, catalog: Catalog) -> str | None:
    """The source a plain per-worker query reads (see the module docstring), else None."""
    try:
        tree = sqlglot.parse_one(sql, read=statements.SQLGLOT_DIALECT)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return None
    if not isinstance(tree, exp.Select) or tree.args.get("distinct") or tree.args.get("group"):
        return None
    if tree.args.get("having") or tree.args.get("with") or any(tree.find_all(*_NOT_PLAIN)):
        return None
    tables = list(tree.find_all(exp.Table))
    if len(tables) != 1 or not isinstance(tables[0].this, exp.Identifier):
        return None
    ident = tables[0].this
    relation = catalog.get(str(ident.name) if ident.quoted else str(ident.name).lower())
    if relation is None or relation.kind != "source" or relation.home is not None:
        return None
    return relation.name


def _write_ndjson(table: pa.Table, sink: Any) -> None:
    line = _exact_json if any(_has_decimal(f.type) for f in table.schema) else _line
    for batch in table.to_batches(max_chunksize=65_536):
        lines = [line(row) for row in batch.to_pylist()]
        if lines:
            sink.write(("\n".join(lines) + "\n").encode("utf-8"))


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, default=_plain)


def _has_decimal(kind: pa.DataType) -> bool:
    if pa.types.is_decimal(kind):
        return True
    return any(_has_decimal(kind.field(i).type) for i in range(kind.num_fields))


def _exact_json(value: object) -> str:
    """`value` as JSON with its decimals as JSON numbers, digit for digit, nested ones too
    (as text they would not load back into a DECIMAL column, as floats they lose digits)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_exact_json(v) for v in value) + "]"
    return json.dumps(value, default=_plain)


def _plain(value: object) -> object:
    convert: dict[type, Callable[[Any], object]] = {
        datetime.datetime: lambda v: v.isoformat(sep=" "),
        datetime.date: lambda v: v.isoformat(),
        datetime.time: lambda v: v.isoformat(),
        datetime.timedelta: lambda v: v.total_seconds(),
        decimal.Decimal: str,
        bytes: lambda v: v.hex(),
    }
    for kind, fn in convert.items():
        if isinstance(value, kind):
            return fn(value)
    return str(value)
