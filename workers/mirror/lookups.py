"""Key lookups answered from a worker's mirror of its engine's batches (`workers/mirror/batches.py`):
`SELECT * FROM t WHERE id = 424242`, or a column list and an IN-list, which the coordinator
routes to the one worker that owns the key.

Only an equality or IN-list of literals on one integer or string column is taken: pyarrow's
`equal`/`is_in` select exactly the rows SQL equality selects there (NULL never matches, strings
compare byte for byte). A literal out of the column's range, any other predicate, expression,
alias, ORDER BY or LIMIT is not matched and goes to the engine. Rows come back in the order of
the batches, as one engine thread scans them; the query asks for no order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.mirror.aggregates import IDENT, MAX_CACHED, ident_name

_LITERAL = r"(?:-?[0-9]+|'(?:[^']|'')*')"
_LOOKUP_RE = re.compile(
    rf"\s*SELECT\s+(?P<columns>\*|{IDENT}(?:\s*,\s*{IDENT})*)\s+FROM\s+(?P<source>{IDENT})"
    rf"\s+WHERE\s+(?P<key>{IDENT})\s*(?:=\s*(?P<one>{_LITERAL})"
    rf"|IN\s*\(\s*(?P<many>{_LITERAL}(?:\s*,\s*{_LITERAL})*)\s*\))\s*;?\s*",
    re.IGNORECASE,
)
_IDENT_RE = re.compile(IDENT)
_LITERAL_RE = re.compile(_LITERAL)


def _value(literal: str) -> int | str:
    if literal.startswith("'"):
        return literal[1:-1].replace("''", "'")
    return int(literal)


@dataclass(frozen=True)
class Lookup:
    """Rows of one source whose `key` equals one of `values`, as `columns` (None: all)."""

    source: str
    columns: tuple[str, ...] | None
    key: str
    values: tuple[int | str, ...]
    shape: str
    """The SQL with its literals taken out: every lookup of this shape has one schema."""

    def evaluate(self, batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table | None:
        """The rows in the engine's `schema`, or None when the engine must answer (also
        over no batch: nothing then tells whether the literals fit the column's type)."""
        if not batches:
            return None
        source_schema = batches[0].schema
        index = source_schema.get_field_index(self.key)
        if index < 0:
            return None
        needle = _needle(source_schema.field(index).type, self.values)
        if needle is None:
            return None
        names = list(self.columns) if self.columns is not None else source_schema.names
        if names != schema.names or any(source_schema.get_field_index(n) < 0 for n in names):
            return None
        found = []
        for batch in batches:
            column = batch.column(index)
            mask = (
                pc.equal(column, needle)
                if isinstance(needle, pa.Scalar)
                else pc.is_in(column, value_set=needle)
            )
            if mask.true_count:
                found.append(batch.filter(mask).select(names))
        if not found:
            return schema.empty_table()
        try:
            return pa.Table.from_batches(found).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return None

    def agrees(self, mine: pa.Table, engine: pa.Table) -> bool:
        """Whether both hold the same rows, in any order."""
        return mine.schema == engine.schema and _rows(mine) == _rows(engine)


def _rows(table: pa.Table) -> list[tuple[str, ...]]:
    return sorted(tuple(repr(v) for v in row.values()) for row in table.to_pylist())


def _needle(kind: pa.DataType, values: tuple[int | str, ...]) -> Any:
    """The literal(s) as an Arrow scalar or array of the column's type, or None when the
    column's type or a literal's range is not one taken here."""
    if pa.types.is_integer(kind):
        if not all(isinstance(v, int) for v in values):
            return None
        bounds = np.iinfo(kind.to_pandas_dtype())
        if not all(bounds.min <= v <= bounds.max for v in values if isinstance(v, int)):
            return None
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if not all(isinstance(v, str) for v in values):
            return None
    else:
        return None
    if len(values) == 1:
        return pa.scalar(values[0], kind)
    return pa.array(values, kind)


@lru_cache(maxsize=MAX_CACHED)
def parse(sql: str) -> Lookup | None:
    """The lookup `sql` asks for, or None when it is anything else."""
    match = _LOOKUP_RE.fullmatch(sql)
    if match is None:
        return None
    columns = match.group("columns")
    names = (
        None
        if columns == "*"
        else tuple(ident_name(m.group(0)) for m in _IDENT_RE.finditer(columns))
    )
    group = "one" if match.group("one") is not None else "many"
    literals = tuple(_value(m.group(0)) for m in _LITERAL_RE.finditer(match.group(group)))
    start, end = match.span(group)
    shape = f"{sql[:start]}?{'' if group == 'one' else '*'}{sql[end:]}"
    return Lookup(
        ident_name(match.group("source")), names, ident_name(match.group("key")), literals, shape
    )
