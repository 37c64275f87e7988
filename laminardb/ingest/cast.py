"""The casting policy of ingestion: Arrow columns into exactly a source's field types.

Shared by every input kind (see `laminardb.ingest.convert` for the rules and why): lossless
or type-natured casts only, precise errors that name the table, column, value and row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from laminardb.api.errors import IngestionError, SchemaError, codes

Column = Any  # pa.Array | pa.ChunkedArray (pyarrow ships no type hints)

ARROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


# --- errors -------------------------------------------------------------------------------


def schema_error(table: str, message: str) -> SchemaError:
    return SchemaError(
        f"Schema mismatch (202): table '{table}': {message}", code=codes.SCHEMA_MISMATCH
    )


def ingest_error(table: str, message: str) -> IngestionError:
    return IngestionError(
        f"Ingestion failed (300): table '{table}': {message}", code=codes.INGESTION_FAILED
    )


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SQL_NAMES = {"int8": "TINYINT", "int16": "SMALLINT", "int32": "INT", "int64": "BIGINT"}
_SQL_NAMES |= {"float": "REAL", "double": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}
_SQL_NAMES |= {"date32[day]": "DATE", "binary": "BYTEA"}


def _sql_name(t: pa.DataType) -> str:
    """The SQL spelling of a column type, for messages ('BIGINT', 'TIMESTAMP', ...)."""
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    spelled = {"ts": "TIMESTAMP", "time": "TIME", "interval": "INTERVAL"}.get(kind_of(t), str(t))
    return _SQL_NAMES.get(str(t), spelled)


def describe(field: pa.Field) -> str:
    return f"column '{field.name}' ({_sql_name(field.type)})"


# --- the casting policy -------------------------------------------------------------------


_T = pa.types
_KINDS: tuple[tuple[str, tuple[Callable[[pa.DataType], bool], ...]], ...] = (
    ("bool", (_T.is_boolean,)),
    ("int", (_T.is_integer,)),
    ("float", (_T.is_floating,)),
    ("decimal", (_T.is_decimal,)),
    ("str", (_T.is_string, _T.is_large_string, _T.is_string_view)),
    ("bin", (_T.is_binary, _T.is_large_binary, _T.is_binary_view, _T.is_fixed_size_binary)),
    ("ts", (_T.is_timestamp,)),
    ("date", (_T.is_date,)),
    ("time", (_T.is_time,)),
    ("duration", (_T.is_duration,)),
    ("interval", (_T.is_interval,)),
    ("nested", (_T.is_nested,)),
)


def kind_of(t: pa.DataType) -> str:
    """A coarse family of an Arrow type; the policy is written in families."""
    return next((name for name, checks in _KINDS if any(c(t) for c in checks)), "other")


_NUMERIC = frozenset({"int", "float", "decimal"})
_ALLOWED: dict[str, frozenset[str]] = {
    **dict.fromkeys(("int", "float", "decimal"), _NUMERIC),
    **{kind: frozenset({kind}) for kind in ("bool", "time", "interval", "nested")},
    "duration": frozenset({"duration", "interval"}),
    "str": frozenset({"str", "bin", "ts", "date"}),
    "bin": frozenset({"bin", "str"}),
    "ts": frozenset({"ts", "date"}),
    "date": frozenset({"date", "ts"}),
}


def _try_cast(col: Column, dst: pa.DataType, src_kind: str, dst_kind: str) -> Column:
    """Cast by the policy; raises an Arrow error when some value does not fit."""
    if dst_kind == "float" and src_kind != "float":
        return pc.cast(col, dst, safe=False)  # rounding is what DOUBLE/REAL mean
    if dst_kind == "decimal" and src_kind == "int":  # Arrow sizes the decimal by the type
        wide = pa.decimal256(76, dst.scale) if dst.bit_width > 128 else pa.decimal128(38, dst.scale)
        return pc.cast(pc.cast(col, wide), dst)
    if dst_kind == "ts" and src_kind == "ts":
        return pc.cast(col, options=pc.CastOptions(dst, allow_time_truncate=True))
    if dst_kind == "ts" and src_kind == "str":
        return _parse_timestamps(col, dst)
    if (src_kind, dst_kind) == ("duration", "interval"):
        return _as_interval(col)
    out = pc.cast(col, dst)
    if src_kind == "float" and dst_kind == "float" and dst.bit_width < col.type.bit_width:
        if pc.any(pc.and_(pc.is_inf(out), pc.is_finite(col))).as_py():
            raise pa.ArrowInvalid(f"value out of range for {_sql_name(dst)}")
    elif (src_kind, dst_kind) == ("ts", "date") and not (
        pc.all(pc.equal(pc.cast(out, col.type), col)).as_py()
    ):
        raise pa.ArrowInvalid("the time of day would be lost")
    return out


_DAY_NS = 86_400 * 10**9


def _as_interval(col: Column) -> Column:
    """Durations (pandas timedelta64, Arrow duration) as INTERVAL values: whole days, then
    nanoseconds, as Arrow converts a Python `timedelta` (Arrow has no such cast)."""
    if isinstance(col, pa.ChunkedArray):
        chunks = [_as_interval(chunk) for chunk in col.chunks]
        return pa.chunked_array(chunks, pa.month_day_nano_interval())
    nanos = pc.cast(pc.cast(col, pa.duration("ns")), pa.int64())  # an overflow raises
    days, rest = np.divmod(nanos.fill_null(0).to_numpy(), _DAY_NS)
    values = np.zeros(len(col), dtype=[("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
    values["days"], values["nanos"] = days, rest
    validity = pc.is_valid(col).buffers()[1] if col.null_count else None
    return pa.Array.from_buffers(
        pa.month_day_nano_interval(), len(col), [validity, pa.py_buffer(values.tobytes())]
    )


#: An ISO-8601 time of day that ends in a zone: `Z`, `+02`, `+0200` or `+02:00`.
_ZONED = r"\d:\d\d(?::\d\d(?:[.,]\d*)?)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"


def _parse_timestamps(col: Column, dst: pa.DataType) -> Column:
    """ISO strings into `dst`: zone offsets are converted to UTC, and digits below the unit
    (nanoseconds into microseconds) truncated; strings with and without zones may mix."""

    def parse(part: Column, tz: str | None) -> Column:
        options = pc.CastOptions(dst, allow_time_truncate=True)
        try:
            return pc.cast(pc.cast(part, pa.timestamp(dst.unit, tz)), options=options)
        except pa.ArrowInvalid:  # more digits than the unit: parse at ns, then truncate
            return pc.cast(pc.cast(part, pa.timestamp("ns", tz)), options=options)

    zoned = pc.fill_null(pc.match_substring_regex(col, _ZONED), False)
    if not pc.any(zoned).as_py():
        return parse(col, None)
    if pc.all(zoned).as_py():
        return parse(col, "UTC")
    none = pa.scalar(None, col.type)
    aware = parse(pc.if_else(zoned, col, none), "UTC")
    return pc.if_else(zoned, aware, parse(pc.if_else(zoned, none, col), None))


def first_failure(col: Column, attempt: Callable[[Column], object]) -> int:
    """The row to blame when `attempt(col)` fails: the end of the shortest failing prefix."""
    lo, hi = 0, len(col)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            attempt(col.slice(0, mid))
            lo = mid
        except ARROW_ERRORS:
            hi = mid
    return hi - 1


def _value_at(col: Column, row: int) -> object:
    try:
        return col[row].as_py()
    except ARROW_ERRORS:
        return col[row]


def _cast(col: Column, field: pa.Field, table: str, rows: Sequence[int] | None = None) -> Column:
    """`col` cast to `field.type`, or a SchemaError naming the column, value and row."""
    dst = field.type
    if pa.types.is_dictionary(col.type) and not pa.types.is_dictionary(dst):
        col = pc.cast(col, col.type.value_type)  # pandas/polars categoricals
        if col.type == dst:
            return col
    src_kind, dst_kind = kind_of(col.type), kind_of(dst)
    if pa.types.is_null(col.type):
        return pc.cast(col, dst)
    if dst_kind not in _ALLOWED.get(src_kind, frozenset()):
        row = int(pc.index(pc.is_valid(col), True).as_py())
        if row < 0:  # all NULL: the values carry no type conflict
            return pa.nulls(len(col), dst)
        shown = rows[row] if rows is not None else row
        hint = ""
        if dst_kind in ("ts", "date") and src_kind in _NUMERIC:
            hint = " (epoch numbers are ambiguous: pass datetime, ISO strings or Arrow timestamps)"
        raise schema_error(
            table,
            f"{describe(field)} cannot take {col.type} values, e.g. "
            f"{show(_value_at(col, row))} at row {shown}{hint}",
        )
    try:
        return _try_cast(col, dst, src_kind, dst_kind)
    except ARROW_ERRORS as exc:
        row = first_failure(col, lambda part: _try_cast(part, dst, src_kind, dst_kind))
        shown = rows[row] if rows is not None else row
        raise schema_error(
            table,
            f"{describe(field)} cannot take {show(_value_at(col, row))} at row {shown}: {exc}",
        ) from None


def conform(col: Column, field: pa.Field, table: str, rows: Sequence[int] | None = None) -> Column:
    """Cast one column to its field and check the NOT NULL rule."""
    if col.type != field.type:
        col = _cast(col, field, table, rows)
    if not field.nullable and col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        shown = rows[row] if rows is not None else row
        raise schema_error(table, f"{describe(field)} is NOT NULL but row {shown} is NULL")
    return col


def check_names(names: Sequence[Any], schema: pa.Schema, table: str) -> None:
    """Unknown, duplicate and missing columns are errors; the order does not matter."""
    expected = schema.names
    if len(names) == len(expected) and list(names) == expected:
        return
    known = set(expected)
    seen: set[Any] = set()
    for name in names:
        if name in seen:
            raise schema_error(table, f"duplicate column '{name}'")
        seen.add(name)
        if name not in known:
            lower = {n.lower(): n for n in expected}
            guess = lower.get(str(name).lower())
            hint = f" (did you mean '{guess}'?)" if guess else ""
            raise schema_error(
                table, f"unknown column '{name}'{hint}; columns are {', '.join(expected)}"
            )
    missing = [n for n in expected if n not in seen]
    if missing:
        raise schema_error(
            table,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
            " (NULLs are not filled in for absent columns; pass None values explicitly)",
        )


def conform_table(data: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    """An Arrow table with exactly `schema`; no copy where the types already match."""
    if data.schema.equals(schema, check_metadata=True) and all(
        f.nullable or not data.column(i).null_count for i, f in enumerate(schema)
    ):
        return data
    check_names(data.column_names, schema, table)
    columns = [conform(data.column(f.name), f, table) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
