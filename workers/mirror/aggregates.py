"""Whole-source aggregates answered from a worker's mirror of its engine's batches
(`workers/mirror/batches.py`): `SELECT count(*) AS "_a0", sum(v) AS "_a1" FROM t`, which the
coordinator sends every worker of a global two-phase aggregate.

Only what numpy and pyarrow compute as the engine does is taken: `count(*)`, `count(col)`,
`sum` of integer and floating columns (int64 sums wrap as the engine's do; float32 is summed
as float64, as the engine does), and `min`/`max` of integer columns (floats are left to the
engine: NaN orders differently). No WHERE, GROUP BY, DISTINCT or expression: anything else
is not matched and goes to the engine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IDENT = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")+")'
"""A SQL identifier, plain or double-quoted."""
_ITEM = rf"(count|sum|min|max)\s*\(\s*(\*|{IDENT})\s*\)(?:\s+AS\s+{IDENT})?"
_ITEM_RE = re.compile(_ITEM, re.IGNORECASE)
_QUERY_RE = re.compile(
    rf"\s*SELECT\s+((?:{_ITEM})(?:\s*,\s*{_ITEM})*)\s+FROM\s+(?P<source>{IDENT})\s*;?\s*",
    re.IGNORECASE,
)

MAX_CACHED = 256
"""Distinct SQL texts parsed and remembered."""


@dataclass(frozen=True)
class Aggregate:
    """A query this module can answer: aggregates over every row of one source."""

    source: str
    items: tuple[tuple[str, str | None], ...]
    """(function, column) in output order; the column is None for `count(*)`."""
    shape: str = ""
    """The SQL: its answer's schema is learnt from the engine once (`Mirror`)."""

    def evaluate(self, batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table | None:
        return evaluate(self, batches, schema)

    def agrees(self, mine: pa.Table, engine: pa.Table) -> bool:
        return agrees(mine, engine)


def ident_name(ident: str) -> str:
    """The name an identifier refers to: quoted as written, unquoted folded to lower case
    (as the engine folds it)."""
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


@lru_cache(maxsize=MAX_CACHED)
def parse(sql: str) -> Aggregate | None:
    """The aggregate `sql` asks for, or None when it is anything else."""
    match = _QUERY_RE.fullmatch(sql)
    if match is None:
        return None
    items: list[tuple[str, str | None]] = []
    for item in _ITEM_RE.finditer(match.group(1)):
        function, argument = item.group(1).lower(), item.group(2)
        if argument == "*":
            if function != "count":
                return None
            items.append((function, None))
        else:
            items.append((function, ident_name(argument)))
    return Aggregate(ident_name(match.group("source")), tuple(items), sql)


def _column(batches: list[pa.RecordBatch], name: str) -> pa.ChunkedArray:
    return pa.chunked_array([b.column(name) for b in batches], batches[0].schema.field(name).type)


def _sum(values: pa.ChunkedArray) -> pa.Scalar:
    """The engine's sum: int64 (uint64) wrapping on overflow, float64 for floats, NULL
    over no value. numpy adds a chunk without NULLs in half pyarrow's time."""
    kind = values.type
    wide = (
        pa.float64()
        if pa.types.is_floating(kind)
        else pa.uint64()
        if pa.types.is_unsigned_integer(kind)
        else pa.int64()
    )
    if len(values) == values.null_count:
        return pa.scalar(None, wide)
    dtype = wide.to_pandas_dtype()
    with np.errstate(over="ignore"):  # a float sum past the range is inf, as the engine's
        sums = [
            np.sum(chunk.to_numpy(zero_copy_only=True), dtype=dtype)
            if chunk.null_count == 0
            else pc.sum(chunk.cast(wide)).as_py() or 0
            for chunk in values.chunks
        ]
        # an array's sum wraps in int64 as the engine's does (Python's int would not)
        return pa.scalar(np.array(sums, dtype=dtype).sum(dtype=dtype).item(), wide)


def _value(
    function: str, column: str | None, batches: list[pa.RecordBatch], rows: int
) -> pa.Scalar | int:
    """One aggregate's value (`_supported` has checked that it is computed here)."""
    if column is None:
        return rows
    if not batches:
        return 0 if function == "count" else pa.scalar(None)
    values = _column(batches, column)
    if function == "count":
        return len(values) - values.null_count
    if function == "sum":
        return _sum(values)
    return pc.min_max(values)[function]


def _supported(aggregate: Aggregate, batches: list[pa.RecordBatch]) -> bool:
    """Whether every part is computed here: each column exists (else the engine's error
    says which), `sum` is over integers or REAL/DOUBLE, `min`/`max` over integers."""
    if not batches:
        return True
    schema = batches[0].schema
    for function, column in aggregate.items:
        if column is None:
            continue
        index = schema.get_field_index(column)
        if index < 0:
            return False
        kind = schema.field(index).type
        if function == "count" or pa.types.is_integer(kind):
            continue
        if not (function == "sum" and pa.types.is_floating(kind) and not pa.types.is_float16(kind)):
            return False
    return True


def evaluate(
    aggregate: Aggregate, batches: list[pa.RecordBatch], schema: pa.Schema
) -> pa.Table | None:
    """The answer to `aggregate` over `batches` in the engine's `schema`, or None when some
    part of it is left to the engine."""
    if len(schema) != len(aggregate.items) or not _supported(aggregate, batches):
        return None
    rows = sum(b.num_rows for b in batches)
    arrays = []
    for (function, column), target in zip(aggregate.items, schema, strict=True):
        value = _value(function, column, batches, rows)
        scalar = value if isinstance(value, pa.Scalar) else pa.scalar(value, pa.int64())
        try:
            arrays.append(pa.array([scalar.as_py()], scalar.type).cast(target.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    return pa.Table.from_arrays(arrays, schema=schema)


def agrees(mine: pa.Table, engine: pa.Table) -> bool:
    """Whether two one-row answers hold the same values (floats to 1e-9 relative: the
    engine and pyarrow add in different orders)."""
    if mine.schema != engine.schema or mine.num_rows != engine.num_rows:
        return False
    for a, b in zip(mine.to_pylist(), engine.to_pylist(), strict=True):
        for x, y in zip(a.values(), b.values(), strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not (x == y or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)):
                    return False
            elif x != y:
                return False
    return True
