"""Convert and validate everything `insert`/`insert_json`/`insert_csv` accept into an Arrow
table of exactly a source's schema (DESIGN decision 5).

The native engine never checks an insert against the declared schema: a batch with another
column order, `large_string`, an `int64` where a DOUBLE belongs, a missing column... is
accepted, and every later query on that source fails with "Mismatch between schema and
batches" (research/native-engine.md sections 5.2 and 8). The coordinator therefore converts
every input here, and only tables with the exact schema ever reach an engine.

Rules (one policy for every input kind, applied to Arrow types after conversion):

* Columns are matched by name (case-sensitive, any order). An unknown column or a column
  missing altogether is a `SchemaError`: NULLs are never filled in for a missing column,
  because a misspelt key would silently write NULLs. Within a list of dicts, a key absent
  from *some* rows is NULL there (as in JSON), and None values are NULL.
* Casts must be lossless, except where loss is the column's nature: integer, decimal or
  float into integer/decimal (overflow, fractions and NaN are errors; 3.0 into BIGINT is
  fine), anything numeric into DOUBLE/REAL (rounded; a finite value overflowing REAL is an
  error; floats into DECIMAL round to its scale), string/large_string/string_view into
  VARCHAR, ISO-8601 strings into TIMESTAMP (an offset or `Z` is converted to UTC) or DATE
  (`YYYY-MM-DD`), timestamps of any unit or time zone into TIMESTAMP (UTC wall clock;
  digits below microseconds are truncated), DATE into TIMESTAMP (midnight), TIMESTAMP into
  DATE only at midnight, all-None (`null` type) columns into any type.
* Refused: strings into numbers or booleans (except in CSV, which is text by nature),
  numbers or booleans into strings, booleans into numbers and back, and integers into
  TIMESTAMP/DATE: an epoch number does not say its unit (s, ms, us), so pass `datetime`,
  an ISO string or an Arrow timestamp array.
* NULL in a NOT NULL column is a `SchemaError`.

Error messages name the table, the column and, where one is to blame, the value and its
row (0-based, in the order given). Input-shape errors (ragged columns, a row that is not a
dict, malformed JSON/CSV) are `IngestionError`. Empty inputs raise what native raises.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import functools
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from laminardb.api.args import not_text
from laminardb.ingest.cast import (
    ARROW_ERRORS,
    Column,
    check_names,
    conform,
    conform_table,
    describe,
    first_failure,
    ingest_error,
    kind_of,
    schema_error,
    show,
)

__all__ = ["CSV_AS_TEXT", "UNSUPPORTED_MESSAGE", "from_csv", "from_json", "to_table"]

#: Native `insert`'s TypeError text for inputs it does not know.
UNSUPPORTED_MESSAGE = (
    "Unsupported data type. Expected: Arrow-compatible object, PyArrow RecordBatch/Table, "
    "Pandas DataFrame, Polars DataFrame, dict, list[dict], or dict of lists."
)

# --- Python values ------------------------------------------------------------------------


_NONE = type(None)
#: Python value types for which Arrow's typed conversion does exactly what the policy does
#: (it is faster than inference plus a cast, but elsewhere it truncates 3.5 into BIGINT).
#: An empty set: typed conversion is always safe (it refuses every other Python type).
_TYPED: dict[pa.DataType, frozenset[type]] = {
    **{t: frozenset({int, _NONE}) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())},
    pa.float64(): frozenset({int, float, _NONE}),
    pa.timestamp("us"): frozenset({datetime.datetime, _NONE}),
    pa.date32(): frozenset({datetime.date, _NONE}),
    pa.month_day_nano_interval(): frozenset({datetime.timedelta, _NONE}),
    pa.string(): frozenset(),
    pa.bool_(): frozenset(),
}


def _from_values(
    values: Sequence[Any], field: pa.Field, table: str, from_pandas: bool = False
) -> Column:
    """One column from Python values: Arrow's type inference, then the casting policy.

    Inference is used only on values of one Python type (or ints and floats): with several,
    Arrow converts by the first one it sees and takes 1700000000 after a datetime as a
    microsecond timestamp, or a datetime after a date as that date.
    """
    typed = _TYPED.get(field.type)
    if typed is not None and (not typed or typed.issuperset(map(type, values))):
        try:
            return conform(pa.array(values, field.type, from_pandas=from_pandas), field, table)
        except ARROW_ERRORS:
            pass  # the general path below finds the value to blame
    kinds = set(map(type, values)) - {_NONE}
    if int in kinds and (pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)):
        values = _beyond_int64(
            values, float if pa.types.is_floating(field.type) else decimal.Decimal
        )
    if len(kinds) > 1 and not kinds <= {int, float}:
        return _from_mixed(values, field, table, from_pandas)
    try:
        arr = pa.array(values, from_pandas=from_pandas)
    except ARROW_ERRORS:
        return _from_mixed(values, field, table, from_pandas)
    return conform(arr, field, table)


_INT64 = range(-(2**63), 2**63)


def _beyond_int64(values: Sequence[Any], kind: Callable[[int], Any]) -> Sequence[Any]:
    """`values` with every int that Arrow cannot read as int64 made a float or a Decimal,
    as native takes 2**63 into a DOUBLE (Arrow gives up on such an int)."""
    if all(type(v) is not int or v in _INT64 for v in values):
        return values
    return [kind(v) if type(v) is int and v not in _INT64 else v for v in values]


def _from_mixed(values: Sequence[Any], field: pa.Field, table: str, from_pandas: bool) -> pa.Array:
    """A column whose values have several Python types (datetimes and ISO strings, ...):
    each type is converted on its own, then the pieces are put back in row order."""
    groups: dict[type, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(type(value), []).append(i)
    parts: list[pa.Array] = []
    order: list[int] = []
    for kind, rows in groups.items():
        sub = [values[i] for i in rows]
        try:
            arr = (
                pa.nulls(len(sub))
                if kind.__name__ == "NaTType"
                else pa.array(sub, from_pandas=from_pandas)
            )
        except ARROW_ERRORS as exc:
            for i in rows:
                try:
                    pa.array([values[i]], from_pandas=from_pandas)
                except ARROW_ERRORS as one:
                    value = values[i]
                    why = _why_not(value, one)
                    raise schema_error(
                        table, f"{describe(field)} cannot take {show(value)} at row {i}: {why}"
                    ) from None
            raise schema_error(table, f"{describe(field)}: {exc}") from None
        parts.append(conform(arr, field, table, rows))
        order.extend(rows)
    inverse = [0] * len(order)
    for position, row in enumerate(order):
        inverse[row] = position
    return pa.concat_arrays(parts).take(pa.array(inverse, pa.int64()))


def _why_not(value: object, error: Exception) -> str:
    """Why Arrow refused one Python value, in words (its own are about C types)."""
    if type(value) is int:
        return "beyond 64 bits"
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return "NaN and infinities are no DECIMAL value"
    return str(error)


def _from_rows(rows: list[Any], schema: pa.Schema, table: str) -> pa.Table:
    """A list of dicts: one pass in C when every row has exactly the schema's keys."""
    names = schema.names
    columns: Sequence[Sequence[Any]] | None = None
    try:
        if set(map(len, rows)) == {len(names)}:
            columns = [list(map(itemgetter(name), rows)) for name in names]
    except (KeyError, TypeError, IndexError):
        columns = None
    if columns is None:
        keys: dict[Any, None] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ingest_error(table, f"row {i} is not a dict: {show(row)}")
            keys.update(dict.fromkeys(row))
        check_names(list(keys), schema, table)
        columns = [[row.get(name) for row in rows] for name in names]
    arrays = [
        _typed_column(values, plan) or _from_values(values, plan[0], table)
        for values, plan in zip(columns, _plan(schema), strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


#: Per field: the field, its type, and its `_TYPED` entry (None: typed conversion unsafe).
_FieldPlan = tuple[pa.Field, pa.DataType, frozenset[type] | None]
_PLANS: dict[int, tuple[pa.Schema, list[_FieldPlan]]] = {}


def _plan(schema: pa.Schema) -> list[_FieldPlan]:
    """The fields of `schema` with what `_typed_column` needs, computed once per schema
    object (a source's schema is one object for its lifetime; small inserts pay µs per
    attribute access and `_TYPED` lookup)."""
    cached = _PLANS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    plan = [(f, f.type, _TYPED.get(f.type)) for f in schema]
    if len(_PLANS) >= 64:
        _PLANS.clear()
    _PLANS[id(schema)] = (schema, plan)  # holding `schema` keeps its id from being reused
    return plan


def _typed_column(values: Sequence[Any], plan: _FieldPlan) -> pa.Array | None:
    """`_from_values`' first step inlined for the common case (typed conversion of values
    it is exact for, no NULL in a NOT NULL column); None sends the column down the general
    path, which also finds the value to blame."""
    field, typ, typed = plan
    if typed is None or (typed and not typed.issuperset(map(type, values))):
        return None
    try:
        arr = pa.array(values, typ, from_pandas=False)
    except ARROW_ERRORS:
        return None
    return arr if field.nullable or not arr.null_count else None


def _is_column(value: object) -> bool:
    """Whether a dict value is a whole column (list, array, Series) rather than one value."""
    if isinstance(value, (list, tuple, pa.Array, pa.ChunkedArray)):
        return True
    if isinstance(value, (str, bytes, bytearray, dict)):
        return False
    ndim = getattr(value, "ndim", None)
    if ndim is not None:
        return bool(ndim >= 1)
    return hasattr(value, "__arrow_c_array__") or hasattr(value, "__arrow_c_stream__")


def _from_column_object(value: Any, field: pa.Field, table: str) -> Column:
    """A column given as numpy array, pandas/polars Series, Arrow array or list."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return conform(value, field, table)
    if isinstance(value, (list, tuple)):
        return _from_values(value, field, table)
    is_pandas = type(value).__module__.startswith("pandas")
    if str(getattr(value, "dtype", "")) == "object":  # numpy/pandas objects: Python values
        return _from_values(value.tolist(), field, table, from_pandas=is_pandas)
    try:
        if hasattr(value, "to_arrow"):  # polars Series
            arr = value.to_arrow()
        elif hasattr(value, "__arrow_c_stream__") and not hasattr(value, "__array__"):
            arr = pa.chunked_array(value)
        else:
            arr = pa.array(value)
    except ARROW_ERRORS:
        values = value.tolist() if hasattr(value, "tolist") else list(value)
        return _from_values(values, field, table, from_pandas=is_pandas)
    return conform(arr, field, table)


def _from_dict(data: dict[Any, Any], schema: pa.Schema, table: str) -> pa.Table:
    """A dict of columns, or a dict of single values (one row), as native accepts both."""
    flags = [_is_column(v) for v in data.values()]
    if not any(flags):
        return _from_rows([data], schema, table)
    if not all(flags):
        single = [k for k, flag in zip(data, flags, strict=True) if not flag]
        raise ingest_error(
            table,
            "a dict must hold either one value per column (one row) or a list per column; "
            f"{', '.join(map(repr, single))} hold single values while others hold lists",
        )
    check_names(list(data), schema, table)
    _check_lengths({k: len(v) for k, v in data.items() if hasattr(v, "__len__")}, table)
    arrays = [_from_column_object(data[f.name], f, table) for f in schema]
    _check_lengths({f.name: len(a) for f, a in zip(schema, arrays, strict=True)}, table)
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_lengths(lengths: dict[Any, int], table: str) -> None:
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ingest_error(table, f"columns have different lengths ({shown})")


def _from_pandas(df: Any, schema: pa.Schema, table: str) -> pa.Table:
    """A pandas DataFrame; named index levels are columns, an unnamed index is dropped.
    Columns convert one by one, object columns as Python values (see `_from_values`)."""
    if any(name is not None for name in df.index.names):
        df = df.reset_index()
    names = [str(c) for c in df.columns]
    check_names(names, schema, table)
    position = {name: i for i, name in enumerate(names)}
    arrays = [_from_column_object(df.iloc[:, position[f.name]], f, table) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _module_class(module: str, name: str) -> Any:
    mod = sys.modules.get(module)  # a frame of a library never imported cannot exist
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def to_table(data: object, schema: pa.Schema, *, table: str) -> pa.Table:
    """`data` (anything native `Connection.insert` accepts) as a table of exactly `schema`.

    Accepted: a list of dicts (rows), a dict of lists/numpy arrays/Series (columns), a dict
    of single values (one row), a pandas or polars DataFrame, a pyarrow Table, RecordBatch or
    RecordBatchReader, and any object with `__arrow_c_stream__` or `__arrow_c_array__`.
    An Arrow table that already has the schema is returned without a copy. A 0-row Arrow
    input gives a 0-row table; `[]`, `{}` and unknown objects raise native's TypeErrors.
    See the module docstring for the casting rules and the errors raised.
    """
    if isinstance(data, pa.Table):
        return conform_table(data, schema, table)
    if isinstance(data, pa.RecordBatch):
        return conform_table(pa.Table.from_batches([data]), schema, table)
    if isinstance(data, list):
        if not data:
            raise TypeError("empty list")
        return _from_rows(data, schema, table)
    if isinstance(data, dict):
        if not data:
            raise TypeError("empty dict")
        return _from_dict(data, schema, table)
    pandas_frame = _module_class("pandas", "DataFrame")
    if pandas_frame is not None and isinstance(data, pandas_frame):
        return _from_pandas(data, schema, table)
    if isinstance(data, (pa.Array, pa.ChunkedArray)) and not pa.types.is_struct(data.type):
        raise TypeError(UNSUPPORTED_MESSAGE)  # one column is not a table, as for native
    polars_frame = _module_class("polars", "DataFrame")
    try:
        if polars_frame is not None and isinstance(data, polars_frame):
            arrow = data.to_arrow()
        elif isinstance(data, pa.RecordBatchReader):
            arrow = data.read_all()
        elif hasattr(data, "__arrow_c_stream__"):
            arrow = pa.RecordBatchReader.from_stream(data).read_all()
        elif hasattr(data, "__arrow_c_array__"):
            arrow = pa.Table.from_batches([pa.record_batch(data)])
        else:
            raise TypeError(UNSUPPORTED_MESSAGE)
    except (pa.ArrowException, ValueError) as exc:
        raise ingest_error(table, f"could not read the Arrow data: {exc}") from None
    return conform_table(arrow, schema, table)


# --- JSON and CSV text --------------------------------------------------------------------


def _require_str(text: object) -> str:
    if not isinstance(text, str):
        raise not_text("data", text)
    return text


def _json_records(text: str, table: str, exact: bool = False) -> list[Any]:
    """The records of a JSON array of objects, one JSON object, or NDJSON lines; `exact`:
    numbers with a fraction or exponent as `Decimal` (a float keeps 15-17 digits)."""
    if not text.strip():
        return []
    loads = functools.partial(json.loads, parse_float=decimal.Decimal) if exact else json.loads
    try:
        if text.lstrip().startswith("["):
            doc = loads(text)
            return list(doc) if isinstance(doc, list) else [doc]
        try:
            return [loads(text)]
        except json.JSONDecodeError as exc:
            if not exc.msg.startswith("Extra data"):
                raise
    except json.JSONDecodeError as exc:
        raise ingest_error(
            table, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    lines = [line for line in text.split("\n") if line.strip()]
    try:  # NDJSON: all lines in one parse, unless a line is broken
        return list(loads("[" + ",".join(lines) + "]"))
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            json.loads(line) if line.strip() else None
        except json.JSONDecodeError as exc:
            raise ingest_error(
                table, f"invalid JSON at line {number} column {exc.colno}: {exc.msg}"
            ) from None
    raise ingest_error(table, "invalid JSON: the lines are not one JSON value each")


#: JSON-native reading types per column family; other families go the Python way.
_JSON_TYPES = {"int": None, "bool": None, "float": pa.float64()} | dict.fromkeys(
    ("str", "ts", "date"), pa.string()
)


#: A record that is `null`: Arrow's reader crashes the process on it (apache/arrow#47409)
#: or reads it as a row of NULLs. A `null` inside a string only costs the fast path.
_TOP_LEVEL_NULL = re.compile(r"(?:^|\})\s*null", re.MULTILINE)


def _ndjson_by_arrow(text: str, schema: pa.Schema) -> pa.Table | None:
    """NDJSON through Arrow's reader, about 10x faster than `json`; None where it declines
    (anything odd: 3.0 into BIGINT, NaN, a pretty-printed object, a column absent from every
    record), so the Python path decides, and words the error."""
    if _TOP_LEVEL_NULL.search(text):
        return None
    fields = []
    for f in schema:
        kind = kind_of(f.type)
        if kind not in _JSON_TYPES:
            return None
        fields.append(pa.field(f.name, _JSON_TYPES[kind] or f.type))
    options = pajson.ParseOptions(
        explicit_schema=pa.schema(fields), unexpected_field_behavior="error"
    )
    try:
        data = pajson.read_json(io.BytesIO(text.encode("utf-8")), parse_options=options)
    except (pa.ArrowException, UnicodeEncodeError):
        return None
    if not data.num_rows or any(c.null_count == data.num_rows for c in data.columns):
        return None
    return data


def from_json(text: str, schema: pa.Schema, *, table: str) -> pa.Table:
    """Native `insert_json` input as a table of exactly `schema`.

    Native accepts a JSON array of objects, or newline-delimited objects (NDJSON, blank lines
    skipped); blank text or `[]` insert nothing. We accept the same, plus one object spread
    over several lines (and Arrow's reader lets `{..} {..}` on one line pass). Native orders
    the columns alphabetically and infers their types, which poisons the source; here columns
    are matched by name and cast like `to_table`'s list of dicts (a JSON string is parsed into
    TIMESTAMP/DATE columns, a JSON number never). Malformed JSON, or a record that is not an
    object, is an `IngestionError`.
    """
    text = _require_str(text)
    if not text.lstrip().startswith("["):
        fast = _ndjson_by_arrow(text, schema)
        if fast is not None:
            return conform_table(fast, schema, table)
    exact = {f.name for f in schema if pa.types.is_decimal(f.type)}
    records = _json_records(text, table, exact=bool(exact))
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ingest_error(table, f"JSON record {i} is not an object: {show(record)}")
        if exact:  # a DECIMAL column takes the number as written, every other one a float
            for key, value in record.items():
                if key not in exact:
                    record[key] = _floats(value)
    return _from_rows(records, schema, table) if records else schema.empty_table()


_TEXT = pa.string()


def _floats(value: Any) -> Any:
    """`value` with every `Decimal` in it a float again, as `json` would have parsed it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


#: Column families read from CSV as text and then cast by the policy: timestamps and dates
#: (zone offsets, ns digits), intervals (Arrow's CSV reader has no INTERVAL: empty is NULL).
CSV_AS_TEXT = ("ts", "date", "interval")


def from_csv(text: str, schema: pa.Schema, *, table: str) -> pa.Table:
    """Native `insert_csv` input (a header row, then rows) as a table of exactly `schema`.

    Native always takes the first line as the header; without one it silently inserts
    nothing, or garbage: here a first line naming no column of the source is an
    `IngestionError`. Columns are matched by name in any order, unknown or missing ones are
    a `SchemaError`. Values are parsed with the schema's types; as in native, an empty field
    is NULL (also for VARCHAR) and the text `NULL` is not. A value its column cannot hold is a
    `SchemaError`; unparseable CSV or text that cannot be UTF-8 encoded is an `IngestionError`.
    """
    text = _require_str(text)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise ingest_error(table, f"CSV is not valid UTF-8 at line {line}") from None
    if not text.strip():
        return schema.empty_table()
    convert = pacsv.ConvertOptions(
        # temporal columns are read as text and cast by the policy (zone offsets, ns digits)
        column_types={f.name: _TEXT if kind_of(f.type) in CSV_AS_TEXT else f.type for f in schema},
        null_values=[""],
        strings_can_be_null=True,
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
    )
    read = pacsv.ReadOptions(use_threads=len(raw) > 1 << 20)
    parse = pacsv.ParseOptions(newlines_in_values=True)
    try:
        data = pacsv.read_csv(io.BytesIO(raw), read, parse, convert)
    except pa.ArrowInvalid as exc:
        _raise_csv_value_error(str(exc), raw, schema, table)
        raise ingest_error(table, f"malformed CSV: {exc}") from None
    names = data.column_names
    if names and not set(names) & set(schema.names):
        raise ingest_error(
            table,
            f"the first CSV line must be a header naming the columns ({', '.join(schema.names)})"
            f"; got {show(text.splitlines()[0])}",
        )
    return conform_table(data, schema, table)


def _raise_csv_value_error(message: str, raw: bytes, schema: pa.Schema, table: str) -> None:
    """For a CSV conversion error, re-read the column as text to name the value and row."""
    if "In CSV column #" not in message:
        return
    index = int(message.split("In CSV column #", 1)[1].split(":", 1)[0])
    name = next(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))[index]
    if name not in schema.names:
        return
    field = schema.field(name)
    strings = pacsv.read_csv(
        io.BytesIO(raw),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string()},
            include_columns=[name],
            null_values=[""],
            strings_can_be_null=True,  # as the first read: an empty field is NULL, not blamed
        ),
    ).column(0)
    try:
        pc.cast(strings, field.type)
    except ARROW_ERRORS as exc:
        row = first_failure(strings, lambda part: pc.cast(part, field.type))
        why = "" if "conversion error" in str(exc) else f": {exc}"  # e.g. decimal digits
        raise schema_error(
            table, f"{describe(field)} cannot take {show(strings[row].as_py())} at row {row}{why}"
        ) from None
    raise schema_error(table, f"{describe(field)}: {message.split(': ', 1)[-1]}")
