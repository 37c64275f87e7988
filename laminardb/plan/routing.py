"""Which virtual shards can hold the rows a query reads: key equality and IN-lists.

A keyed source places each row by its partition key (`ingest.partition`: key → xxh3_64 →
one of 256 virtual shards → worker). When the top-level WHERE pins every key column to
literal values (`k = 5`, `k IN ('a', 'b')`, `5 = k`, one conjunct per key column, ANDed with
anything else), only the shards of those values can hold a matching row, so the query needs
only their workers. Pure logic: the literals are typed exactly as ingestion stores them (the
column's Arrow type) and hashed by the same function, so the answer stays exact. Anything
unusual (a cast that changes the value, a NULL, a float or decimal key, more than
`MAX_VALUES` combinations) routes nowhere special: every worker is asked, as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyarrow as pa
from sqlglot import exp

from laminardb.ingest import partition
from laminardb.plan.layout import NoPlan, Query, name_of
from laminardb.plan.sqltext import conjuncts

MAX_VALUES = 64
"""Most key combinations routed (a longer IN-list asks every worker)."""


def key_shards(query: Query) -> tuple[int, ...] | None:
    """The sorted virtual shards that hold every row `query` can read, or None (all)."""
    relation = query.relation
    keys = relation.partition_by
    where = query.tree.args.get("where")
    if relation.home is not None or not keys or not isinstance(where, exp.Where):
        return None
    pinned = _pinned(where.this, relation.schema, set(keys))
    if any(k not in pinned for k in keys):
        return None
    combos = 1
    for k in keys:
        combos *= len(pinned[k])
    if combos > MAX_VALUES:
        return None
    rows = list(itertools.product(*(pinned[k] for k in keys)))
    table = pa.table(
        {
            k: pa.array([r[i] for r in rows], relation.schema.field(k).type)
            for i, k in enumerate(keys)
        }
    )
    return tuple(sorted({int(v) for v in partition.vshards(table, list(keys))}))


def workers_of(vshards: Sequence[int], n_workers: int) -> list[int]:
    """The workers owning `vshards` when there are `n_workers`, in worker order."""
    return sorted({partition.worker_of(v, n_workers) for v in vshards})


def _pinned(condition: exp.Expr, schema: pa.Schema, keys: set[str]) -> dict[str, list[object]]:
    """Key column -> the literal values a conjunct allows (the first such conjunct wins;
    any conjunct is a valid restriction, since all must hold)."""
    out: dict[str, list[object]] = {}
    for part in conjuncts(condition):
        found = _restriction(part)
        if found is None:
            continue
        column, literals = found
        if column not in keys or column in out:
            continue
        values = [_value(lit, schema.field(column).type) for lit in literals]
        if all(v is not None for v in values):
            out[column] = list(dict.fromkeys(values))
    return out


def _restriction(part: exp.Expr) -> tuple[str, list[exp.Expr]] | None:
    """(column, literal nodes) of `col = lit`, `lit = col` or `col IN (lits)`, else None."""
    try:
        if isinstance(part, exp.EQ):
            for col, lit in ((part.this, part.expression), (part.expression, part.this)):
                if isinstance(col, exp.Column) and not isinstance(col.this, exp.Star):
                    return name_of(col.this), [lit]
        if (
            isinstance(part, exp.In)
            and not part.args.get("query")
            and not part.args.get("unnest")
            and not part.args.get("field")
            and isinstance(part.this, exp.Column)
            and part.expressions
        ):
            return name_of(part.this.this), list(part.expressions)
    except NoPlan:
        return None
    return None


def _value(node: exp.Expr, typ: pa.DataType) -> object | None:
    """The literal as the key column stores it, or None when it is not plainly that value
    (only integer literals for integer keys and string literals for string keys route)."""
    negative = False
    if isinstance(node, exp.Neg):
        negative, node = True, node.this
    if not isinstance(node, exp.Literal):
        return None
    text = str(node.this)
    if pa.types.is_integer(typ) and not node.is_string and text.isascii() and text.isdigit():
        value = -int(text) if negative else int(text)
        try:
            pa.array([value], typ)
        except (pa.ArrowInvalid, OverflowError):
            return None
        return value
    if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) and node.is_string:
        # Escapes are where sqlglot's reading and the engine's could differ: not routed.
        return None if negative or "\\" in text or "'" in text else text
    return None
