"""One split of a file as rows of exactly the source schema, with the checks of `insert`.

CSV is parsed by Arrow with the options of `insert_csv` (empty field = NULL, true/false
spellings, temporal columns parsed by the cast policy); JSON goes through `insert_json`'s
converter; Parquet columns (decoded by polars where it gives what pyarrow gives, see
`polars_read`) are cast like an Arrow `insert`. Any error is re-raised as the same
class with the file named, and the line (CSV/JSON) or row group (Parquet) of the bad row.
"""

from __future__ import annotations

import re
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from laminardb.api.errors import LaminarError
from laminardb.files import polars_read
from laminardb.files.options import FileOptions
from laminardb.files.splits import load_error
from laminardb.ingest import convert
from laminardb.ingest.cast import (
    ARROW_ERRORS,
    conform_table,
    describe,
    first_failure,
    kind_of,
    schema_error,
    show,
)
from laminardb.wire.protocol import FileSplit

_ROW = re.compile(r"\b(?:at )?row (\d+)")
_LINE = re.compile(r"\bline (\d+)")
_READ_ERRORS = (pa.ArrowException, OSError, EOFError, ValueError)
_FOOTERS = threading.Lock()


def read_split(
    split: FileSplit,
    opts: FileOptions,
    schema: pa.Schema,
    table: str,
    threads: bool = True,
    footers: dict[str, pq.FileMetaData] | None = None,
) -> pa.Table:
    """The rows of `split`, cast to `schema`; the class of `insert`'s error when they do not fit.

    `threads` (CSV): let Arrow's CSV reader use its thread pool. A worker of a load that has
    as many workers as there are cores passes False: its siblings already keep every core
    busy, a pool per process then only adds contention, and one thread parses the split as
    one block (one chunk, nothing to concatenate at the commit). Measured, 2M-row CSV read
    by 2 processes on 2 cores: 0.76 s against 1.32 s threaded. Parquet keeps Arrow's
    default (threaded): there the two were within noise of each other. `footers` keeps each
    Parquet file's parsed footer for the next split of that file (a footer grows with the
    row groups: 1.2 MB and 11 ms to parse for 4,000 of them)."""
    if opts.format == "parquet":
        return _parquet(split, schema, table, footers)
    data = _bytes(split, table)
    if opts.format == "csv":
        return _csv(data, split, opts, schema, table, threads)
    return _json(data, split, schema, table)


def _bytes(split: FileSplit, table: str) -> pa.Buffer:
    """The split's bytes (a byte range is mapped, not copied)."""
    try:
        if split.end < 0:
            with pa.input_stream(split.path, compression="detect") as f:
                return f.read_buffer()
        with pa.memory_map(split.path) as mapped:
            mapped.seek(split.start)
            return mapped.read_buffer(split.end - split.start)
    except _READ_ERRORS as exc:
        raise load_error(table, f"cannot read file {split.path!r}: {exc}") from None


def _parquet(
    split: FileSplit,
    schema: pa.Schema,
    table: str,
    footers: dict[str, pq.FileMetaData] | None = None,
) -> pa.Table:
    try:
        if footers is None:
            f = pq.ParquetFile(split.path)
        else:
            with _FOOTERS:  # splits of one file read at once: one of them parses its footer
                f = pq.ParquetFile(split.path, metadata=footers.get(split.path))
                footers[split.path] = f.metadata
    except _READ_ERRORS as exc:
        raise load_error(
            table, f"file {split.path!r} is not a readable Parquet file: {exc}"
        ) from None
    with f:
        return _row_groups(f, split, schema, table)


def _row_groups(f: pq.ParquetFile, split: FileSplit, schema: pa.Schema, table: str) -> pa.Table:
    fast = polars_read.read_row_groups(f, split.path, split.row_groups)
    if fast is not None:
        try:
            return conform_table(fast, schema, table)
        except LaminarError:
            pass  # read again below, one row group at a time, to name the bad one
    parts = []
    for group in split.row_groups:
        where = f"file {split.path!r}, row group {group}"
        try:
            data = f.read_row_group(group)
        except _READ_ERRORS as exc:
            raise load_error(table, f"cannot read {where}: {exc}") from None
        try:
            parts.append(conform_table(data, schema, table))
        except LaminarError as exc:
            raise _located(exc, f" ({where})", None) from None
    return (
        pa.concat_tables(parts) if len(parts) > 1 else (parts[0] if parts else schema.empty_table())
    )


def _csv(
    data: pa.Buffer,
    split: FileSplit,
    opts: FileOptions,
    schema: pa.Schema,
    table: str,
    threads: bool = True,
) -> pa.Table:
    names = split.names or list(schema.names)
    if not data.size or (data.size <= 1 << 16 and data.to_pybytes().isspace()):
        return schema.empty_table()
    types = {
        f.name: pa.string() if kind_of(f.type) in convert.CSV_AS_TEXT else f.type for f in schema
    }
    try:
        wanted = {n: types[n] for n in names if n in types}
        rows = _read_csv(data, split, opts, names, wanted, threads=threads)
        return conform_table(rows, schema, table)
    except LaminarError as exc:
        raise _located(exc, f" (file {split.path!r})", _first_row_line(split, opts)) from None
    except pa.ArrowException as exc:
        raise _csv_error(exc, data, split, opts, schema, table) from None


def _read_csv(
    data: pa.Buffer,
    split: FileSplit,
    opts: FileOptions,
    names: list[str],
    types: dict[str, pa.DataType],
    include: list[str] | None = None,
    threads: bool = True,
) -> pa.Table:
    """Arrow's CSV reader with `insert_csv`'s value rules (empty field = NULL)."""
    convert_options = pacsv.ConvertOptions(
        column_types=types,
        null_values=[""],
        strings_can_be_null=True,
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
        include_columns=include or [],
    )
    skip = 1 if opts.header and split.start <= 0 else 0
    # Single-threaded, the split is parsed as one block: one chunk a column, so the commit's
    # insert takes it as it is instead of concatenating ~10 chunks a million rows (a copy).
    block = 4 << 20 if threads else min(max(data.size + 1, 4 << 20), 1 << 30)
    read_options = pacsv.ReadOptions(
        column_names=names, skip_rows=skip, use_threads=threads, block_size=block
    )
    # pieces are cut outside quoted values (splits.py), which may hold line breaks
    parse = pacsv.ParseOptions(delimiter=opts.delimiter, newlines_in_values=True)
    return pacsv.read_csv(pa.BufferReader(data), read_options, parse, convert_options)


def _csv_error(
    exc: pa.ArrowException,
    data: pa.Buffer,
    split: FileSplit,
    opts: FileOptions,
    schema: pa.Schema,
    table: str,
) -> LaminarError:
    """A parse or conversion error of Arrow, with the file, line and value named."""
    first = _first_row_line(split, opts)
    where = f" (file {split.path!r})"
    message = str(exc)
    names = split.names or list(schema.names)
    column = re.search(r"In CSV column #(\d+): ", message)
    if column is not None and int(column.group(1)) < len(names):
        name = names[int(column.group(1))]
        field = schema.field(name) if name in schema.names else None
        if field is not None:
            text = _read_csv(data, split, opts, names, {name: pa.string()}, [name]).column(0)
            try:
                pc.cast(text, field.type)
            except ARROW_ERRORS:
                pass
            else:  # the text casts: not a value's fault after all
                return load_error(table, f"malformed CSV: {message}{where}")
            row = first_failure(text, lambda part: pc.cast(part, field.type))
            why = "" if "conversion error" in message else f": {message.rsplit(': ', 1)[-1]}"
            return schema_error(
                table,
                f"{describe(field)} cannot take {show(text[row].as_py())} at line {first + row}"
                + why
                + where,
            )
    if isinstance(exc, pa.ArrowInvalid) and "UTF8" in message.upper():
        return load_error(table, f"not valid UTF-8: {message}{where}")
    row_match = re.search(r"Row #(\d+)", message)
    if row_match is not None:
        message += f" (line {first + int(row_match.group(1)) - 1})"
    return load_error(table, f"malformed CSV: {message}{where}")


def _first_row_line(split: FileSplit, opts: FileOptions) -> int:
    """The file line of the split's first data row."""
    return _first_line(split) + (1 if opts.header and split.start <= 0 else 0)


def _json(buffer: pa.Buffer, split: FileSplit, schema: pa.Schema, table: str) -> pa.Table:
    where = f" (file {split.path!r})"
    data = buffer.to_pybytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = _first_line(split) + data[: bad.start].count(b"\n")
        raise load_error(table, f"file {split.path!r}: not valid UTF-8 at line {line}") from None
    try:
        return convert.from_json(text, schema, table=table)
    except LaminarError as exc:
        first = _first_line(split)
        message = _LINE.sub(lambda m: f"line {first + int(m.group(1)) - 1}", str(exc))
        if message == str(exc):  # a record number: one record per line in NDJSON
            message = _ROW.sub(lambda m: f"at line {first + int(m.group(1))}", message)
        raise type(exc)(message + where, code=exc.code) from None


def _located(exc: LaminarError, where: str, first_line: int | None) -> LaminarError:
    """`exc` again, its row number turned into a line of the file, and the file named."""
    message = str(exc)
    if first_line is not None:
        message = _ROW.sub(lambda m: f"at line {first_line + int(m.group(1))}", message)
    return type(exc)(message + where, code=exc.code)


def _first_line(split: FileSplit) -> int:
    """The 1-based line number at which the split starts (counted only when needed)."""
    if split.start <= 0:
        return 1
    count = 0
    with open(split.path, "rb") as f:
        left = split.start
        while left > 0:
            chunk = f.read(min(left, 16 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count + 1
