"""`create_table(name, schema)`: the schema argument as the `CREATE SOURCE` native runs for it.

Native builds SQL DDL from the schema, so its mapping is what a source gets, and the cluster
must give the same columns (found by trying every Arrow type against laminardb 0.17.0):
integers and REAL/DOUBLE keep their type (unsigned ones reach the engine, which refuses
them), every string and binary width becomes VARCHAR / BYTEA, every date DATE, every
timestamp (any unit, any zone) TIMESTAMP, and anything else (decimals, time of day,
intervals, durations, half floats, fixed-size binary, nested and dictionary types) VARCHAR.
`NOT NULL` is dropped. A dict maps names to type strings from native's own short list, case
ignored. Beyond native, any other mapping or list `pa.schema` takes is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from laminardb.api.errors import SchemaError
from laminardb.cluster.catalog import quote

_BY_NAME: dict[str, pa.DataType] = {
    **dict.fromkeys(("int8", "i8"), pa.int8()),
    **dict.fromkeys(("int16", "i16"), pa.int16()),
    **dict.fromkeys(("int", "int32", "i32"), pa.int32()),
    **dict.fromkeys(("int64", "i64"), pa.int64()),
    **dict.fromkeys(("uint8", "u8"), pa.uint8()),
    **dict.fromkeys(("uint16", "u16"), pa.uint16()),
    **dict.fromkeys(("uint32", "u32"), pa.uint32()),
    **dict.fromkeys(("uint64", "u64"), pa.uint64()),
    **dict.fromkeys(("float16", "f16"), pa.float16()),
    **dict.fromkeys(("float", "float32", "f32"), pa.float32()),
    **dict.fromkeys(("float64", "f64", "double"), pa.float64()),
    **dict.fromkeys(("bool", "boolean"), pa.bool_()),
    **dict.fromkeys(("str", "string", "utf8", "large_string", "large_utf8"), pa.string()),
    **dict.fromkeys(("bytes", "binary"), pa.binary()),
    **dict.fromkeys(("date", "date32"), pa.date32()),
    **dict.fromkeys(("timestamp", "datetime"), pa.timestamp("us")),
}
"""Native's type strings (case ignored): anything else is `SchemaError: Unknown type`."""

_SQL_OF: dict[pa.DataType, str] = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.uint8(): "TINYINT UNSIGNED",
    pa.uint16(): "SMALLINT UNSIGNED",
    pa.uint32(): "INT UNSIGNED",
    pa.uint64(): "BIGINT UNSIGNED",
    pa.float32(): "REAL",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}

_NOT_A_SCHEMA = "Schema must be a pyarrow.Schema or a dict mapping column names to type strings"


def arrow_schema(schema: object) -> pa.Schema:
    """The Arrow schema of `create_table`'s argument, with native's errors."""
    if isinstance(schema, pa.Schema):
        return schema
    if isinstance(schema, Mapping):
        return pa.schema([pa.field(str(name), _arrow_type(kind)) for name, kind in schema.items()])
    if isinstance(schema, (list, tuple)):
        try:
            return pa.schema(schema)
        except (TypeError, ValueError, pa.ArrowException):
            pass
    raise TypeError(_NOT_A_SCHEMA)


def _arrow_type(kind: Any) -> pa.DataType:
    if isinstance(kind, pa.DataType):
        return kind
    if not isinstance(kind, str):
        raise TypeError(f"'{type(kind).__name__}' object cannot be cast as 'str'")
    found = _BY_NAME.get(kind.lower())
    if found is None:
        raise SchemaError(f"Unknown type: {kind}")
    return found


def sql_type(kind: pa.DataType) -> str:
    """The SQL type native's `create_table` declares for an Arrow type."""
    if kind in _SQL_OF:
        return _SQL_OF[kind]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "VARCHAR"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "BYTEA"
    if pa.types.is_date(kind):
        return "DATE"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    return "VARCHAR"


def create_source_sql(name: str, schema: object, partition_by: list[str] | None) -> str:
    """The `CREATE SOURCE` statement of `create_table(name, schema, partition_by)`."""
    fields = arrow_schema(schema)
    columns = ", ".join(f"{quote(f.name)} {sql_type(f.type)}" for f in fields)
    sql = f"CREATE SOURCE {name} ({columns})"
    if partition_by:
        sql += " PARTITION BY (" + ", ".join(quote(c) for c in partition_by) + ")"
    return sql
