"""`explain(sql)`'s distributed part: the plan execution would follow, checked the way
execution checks it, and the bytes the workers are expected to send back.

Only plans execution would run are shown: a plan whose probe (the query over empty copies
of its relations in a native engine) refuses it is shown as the gather path it would take.
The bytes back are an upper bound estimated from each asked worker's row count of the
relation (a `count(*)` per worker, answered from the engine's statistics) and the width of
the rows the worker SQL returns: a global aggregate sends one row per worker, a per-worker
top-n at most n rows, anything else at most every row it reads (filters and grouping only
lower that). Variable-width columns (strings, binary) count their offsets only, so the
estimate says "plus their text".
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import sqlglot
from sqlglot import exp

from laminardb.cluster.catalog import Catalog
from laminardb.plan import distributed, extended
from laminardb.plan.distributed import Fetch
from laminardb.plan.split import Plan, Rule
from laminardb.plan.statements import SQLGLOT_DIALECT


def rows(
    sql: str, catalog: Catalog, workers: int, fetch: Fetch | None
) -> list[tuple[str, str]] | None:
    """(plan_key, plan_value) rows of the plan execution would follow for `sql`, with a
    `bytes_back` row when `fetch` can count rows; None when it would gather (the caller
    shows `gather.explain_rows`)."""
    found = distributed.cached_plan(sql, catalog)
    if found is None:
        return extended.explain_rows(sql, catalog, workers, fetch)
    if distributed.refusal(found, catalog) is not None:
        return None
    shown = distributed.explain_rows(found, workers, checked=True)
    if fetch is not None:
        shown.append(("bytes_back", bytes_back(found, catalog, workers, fetch)))
    return shown


def bytes_back(found: Plan, catalog: Catalog, workers: int, fetch: Fetch) -> str:
    """The estimate, as text: '<= B bytes (<= R rows x W bytes)'."""
    relation = catalog.get(found.relation)
    if relation is None:
        return "unknown (the relation is gone)"
    asked = distributed.routed_shards(found, workers)
    counts = [_count(t) for t in fetch(f"SELECT count(*) FROM {relation.name}", asked)]
    limit, global_aggregate = _shape(found)
    per_worker = [min(n, limit) if limit is not None else n for n in counts]
    if global_aggregate:
        per_worker = [1 for _ in counts]
    schema = _worker_schema(found, catalog)
    width, variable = row_width(schema)
    total = sum(per_worker)
    text = f"<= {total * width:,} bytes (<= {total:,} rows x {width} bytes"
    return text + (", plus their text)" if variable else ")")


def _count(table: pa.Table) -> int:
    value = table.column(0)[0].as_py() if table.num_rows else 0
    return int(value or 0)


def _shape(found: Plan) -> tuple[int | None, bool]:
    """(the per-worker LIMIT + OFFSET, whether it is an aggregate without GROUP BY)."""
    tree = sqlglot.parse_one(found.worker_sql, read=SQLGLOT_DIALECT)
    limit: int | None = None
    node = tree.args.get("limit")
    if isinstance(node, exp.Limit) and isinstance(node.expression, exp.Literal):
        limit = int(node.expression.this)
        offset = tree.args.get("offset")
        if isinstance(offset, exp.Offset) and isinstance(offset.expression, exp.Literal):
            limit += int(offset.expression.this)
    aggregate = found.rule is Rule.TWO_PHASE and tree.args.get("group") is None
    return limit, aggregate


def _worker_schema(found: Plan, catalog: Catalog) -> pa.Schema | None:
    relation = catalog.get(found.relation)
    if relation is None:
        return None
    return distributed.worker_schema(found, relation)


def row_width(schema: pa.Schema | None) -> tuple[int, bool]:
    """(fixed bytes per row of `schema`: values, offsets and a validity bit rounded up to a
    byte; whether some column is variable-width)."""
    if schema is None:
        return 0, True
    width, variable = 0, False
    for t in _types(schema):
        if pa.types.is_boolean(t):
            width += 1
        elif pa.types.is_string(t) or pa.types.is_binary(t):
            width, variable = width + 4, True
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            width, variable = width + 8, True
        else:
            try:
                width += max(1, t.bit_width // 8)
            except ValueError:
                variable = True
    return width + (len(schema) + 7) // 8, variable


def _types(schema: pa.Schema) -> Sequence[pa.DataType]:
    return [f.type for f in schema]
