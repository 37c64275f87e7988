"""Execute the planner's rules beyond `split`: shard-local queries (`joins`) and queries
made of sub-queries (`compound`), and show them in `explain`.

`distributed.run` calls `run` when `split` has no plan. Exactness works as in `distributed`:
before any worker is asked, the query runs in a native engine over empty copies of the
relations it reads (a probe, cached per query and relation definitions). If the native
engine refuses it, or anything on the way is unexpected (a worker error, a type no SQL
declares, a merged type that differs from the probe's), `run` returns None and the caller
gathers, which answers exactly (and raises the native error). The answer always gets the
probe's names, types and nullability.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan import compound, distributed, fastmerge, joinagg, joins, split
from laminardb.plan.compound import CompoundPlan
from laminardb.plan.distributed import Fallback, Fetch, sql_type
from laminardb.plan.joinagg import JoinAggPlan
from laminardb.plan.joins import LocalPlan, LocalRule
from laminardb.plan.split import PARTIALS
from laminardb.plan.sqltext import NoLocal

log = logging.getLogger("laminardb.plan")

MAX_DEPTH = 8
"""Nesting of compound plans followed before giving the query to the gather path."""

CACHE_SIZE = 1024

_lock = threading.Lock()
_probes: collections.OrderedDict[tuple[object, ...], tuple[pa.Schema, pa.Schema] | Fallback] = (
    collections.OrderedDict()
)


def run(sql: str, catalog: Catalog, fetch: Fetch) -> pa.Table | None:
    """The answer of `sql` through a shard-local or compound plan, or None when the caller
    must gather (no rule applies, the native engine rejects it, or the plan was not exact)."""
    try:
        found = cached_plan(sql, catalog)
        if isinstance(found, LocalPlan):
            return execute_local(found, catalog, fetch)
        if isinstance(found, JoinAggPlan):
            return execute_join_aggregate(found, catalog, fetch)
        if found is not None:
            return execute_compound(found, catalog, fetch, 0)
        from laminardb.plan import broadcast_run  # a small side shipped to every worker

        return broadcast_run.run(sql, catalog, fetch)
    except Exception as exc:
        log.debug("extended plan handed back to gather: %s", exc)
    return None


def answer(sql: str, catalog: Catalog, fetch: Fetch, depth: int) -> pa.Table:
    """The answer of `sql` by the first rule that plans it; raises when none does."""
    found = distributed.cached_plan(sql, catalog)
    if found is not None:
        return distributed.execute(found, catalog, fetch)
    nested = cached_plan(sql, catalog)
    if isinstance(nested, LocalPlan):
        return execute_local(nested, catalog, fetch)
    if isinstance(nested, JoinAggPlan):
        return execute_join_aggregate(nested, catalog, fetch)
    if nested is not None and depth < MAX_DEPTH:
        return execute_compound(nested, catalog, fetch, depth + 1)
    if nested is None:
        from laminardb.plan import broadcast_run

        return broadcast_run.answer(sql, catalog, fetch)
    raise Fallback(f"no rule plans {sql!r}")


Planned = LocalPlan | CompoundPlan | JoinAggPlan
_plans: collections.OrderedDict[str, tuple[Planned, tuple[object, ...]]] = collections.OrderedDict()
_refused: collections.OrderedDict[str, tuple[object, ...]] = collections.OrderedDict()


def cached_plan(sql: str, catalog: Catalog) -> Planned | None:
    """`joins.plan`, else `compound.plan`, else `joinagg.plan`, remembered while the relations the plan reads
    keep their definitions (planning parses the SQL: several ms a query); a refusal is
    remembered while the whole catalog keeps its definitions (`distributed.catalog_key`)."""
    with _lock:
        hit = _plans.get(sql)
    if hit is not None:
        relations = [catalog.get(n) for n in hit[0].relations]
        known = [r for r in relations if r is not None]
        if len(known) == len(relations) and _definition(known) == hit[1]:
            return hit[0]
    key = distributed.catalog_key(catalog)
    if distributed.refused(_refused, sql, key):
        return None
    found: Planned | None = (
        joins.plan(sql, catalog) or compound.plan(sql, catalog) or joinagg.plan(sql, catalog)
    )
    if found is None:
        distributed.remember_refusal(_refused, sql, key)
    else:
        try:
            definition = _definition(_relations(found.relations, catalog))
        except Fallback:
            return found
        with _lock:
            _plans[sql] = (found, definition)
            _plans.move_to_end(sql)
            while len(_plans) > CACHE_SIZE:
                _plans.popitem(last=False)
    return found


# ---------------------------------------------------------------------------- probes


def _relations(names: tuple[str, ...], catalog: Catalog) -> list[Relation]:
    found = [catalog.get(n) for n in names]
    if any(r is None for r in found):
        raise Fallback("a relation is gone")
    return [r for r in found if r is not None]


def _definition(relations: list[Relation]) -> tuple[object, ...]:
    return tuple(r.definition() for r in relations)


def probe(
    sql: str, worker_sql: str | None, relations: list[Relation], *, empty: bool
) -> tuple[pa.Schema, pa.Schema]:
    """(the answer's schema, the worker SQL's schema) over empty copies of `relations`;
    with `empty`, the query must give no rows there (a per-worker answer is then a part of
    the whole, not a whole of its own). Cached, refusals included."""
    key = (sql, worker_sql, empty, _definition(relations))
    return distributed.memo_probe(
        _probes, _lock, key, lambda: _run_probe(sql, worker_sql, relations, empty)
    )


def _run_probe(
    sql: str, worker_sql: str | None, relations: list[Relation], empty: bool
) -> tuple[pa.Schema, pa.Schema]:
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        for relation in relations:
            for ddl in relation.gather_ddl():
                engine.execute(ddl)
        result = engine.sql(sql).to_arrow()
        if empty and result.num_rows:
            raise Fallback("the query has rows on empty input")
        worker = result.schema if worker_sql is None else engine.sql(worker_sql).to_arrow().schema
    finally:
        engine.close()
    return result.schema, worker


# ---------------------------------------------------------------------------- execution


def execute_local(found: LocalPlan, catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Run a `joins` plan; raises on any problem."""
    relations = _relations(found.relations, catalog)
    shards = None if found.shards is None else list(found.shards)
    if found.rule is LocalRule.ONE_WORKER:
        (table,) = fetch(found.worker_sql, shards)
        return table
    expected, worker = probe(found.sql, found.worker_sql, relations, empty=True)
    names = [f"_p{i}" for i in range(len(worker))]
    partial = pa.schema([pa.field(n, f.type) for n, f in zip(names, worker, strict=True)])
    parts = []
    for table in fetch(found.worker_sql, shards):
        if table.schema.types != partial.types:
            raise Fallback(f"worker types {table.schema.types} differ from {partial.types}")
        parts.append(pa.Table.from_arrays(table.columns, schema=partial))
    rows = pa.concat_tables(parts) if parts else partial.empty_table()
    if found.merge_sql is not None:
        fast = fastmerge.cut(found.merge_sql, PARTIALS, rows)  # sort and cut in process
        rows = fast if fast is not None else merge(found.merge_sql, {PARTIALS: rows})
    return conform(rows, expected)


def join_aggregate_plan(found: JoinAggPlan, catalog: Catalog) -> tuple[split.Plan, Catalog, str]:
    """(split's plan of the outer query, the catalog of `joinagg.DERIVED`, the SQL each
    worker runs); Fallback when the outer query has no two-phase plan."""
    relations = _relations(found.relations, catalog)
    inner, _ = probe(found.inner_sql, None, relations, empty=True)
    derived = joinagg.derived(found, inner)
    outer = distributed.cached_plan(found.outer_sql, derived)
    if outer is None or outer.rule is not split.Rule.TWO_PHASE or outer.shards or outer.vshards:
        raise Fallback("the outer query has no two-phase plan")
    try:
        return outer, derived, joinagg.worker_sql(outer.worker_sql, found)
    except NoLocal as exc:
        raise Fallback(str(exc)) from None


def execute_join_aggregate(found: JoinAggPlan, catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Run a `joinagg` plan: split's two-phase plan of the outer query, each worker running
    it over its part of the join; raises on any problem."""
    expected, _ = probe(found.sql, None, _relations(found.relations, catalog), empty=False)
    outer, derived, worker_sql = join_aggregate_plan(found, catalog)

    def over_the_join(sql: str, shards: list[int] | None) -> Sequence[pa.Table]:
        if sql != outer.worker_sql:
            raise Fallback("the outer plan asked for other SQL")
        return fetch(worker_sql, shards)

    return conform(distributed.execute(outer, derived, over_the_join), expected)


def execute_compound(found: CompoundPlan, catalog: Catalog, fetch: Fetch, depth: int) -> pa.Table:
    """Run a `compound` plan: every piece by its own plan, then the merge; raises on any
    problem (a piece no rule plans included)."""
    expected, _ = probe(found.sql, None, _relations(found.relations, catalog), empty=False)
    pieces = {p.name: answer(p.sql, catalog, fetch, depth) for p in found.pieces}
    return conform(merge(found.merge_sql, pieces), expected)


def merge(sql: str, relations: dict[str, pa.Table]) -> pa.Table:
    """`sql` in a fresh native engine holding each table as a source of that name (plain
    lower-case names: native keeps the quotes of a quoted CREATE SOURCE name)."""
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        for name, table in relations.items():
            if len(set(table.schema.names)) != table.num_columns:
                raise Fallback(f"{name} has duplicate column names")
            stored = pa.schema([f.with_nullable(True) for f in table.schema])
            columns = [f"{quote(f.name)} {sql_type(f.type)}" for f in stored]
            engine.execute(f"CREATE SOURCE {name} ({', '.join(columns)})")
            if engine.schema(name).types != stored.types:
                raise Fallback(f"{name} declared with other types than {stored.types}")
            if table.num_rows:
                data = pa.Table.from_arrays(table.columns, schema=stored).combine_chunks()
                batches = data.to_batches()
                engine.insert(name, batches[0] if len(batches) == 1 else data)
        result: pa.Table = engine.sql(sql).to_arrow()
        return result
    finally:
        engine.close()


def conform(rows: pa.Table, expected: pa.Schema) -> pa.Table:
    """The rows under the native answer's schema (names, types, nullability)."""
    if rows.schema.types != expected.types:
        raise Fallback(f"merged types {rows.schema.types} differ from native {expected.types}")
    for column, f in zip(rows.columns, expected, strict=True):
        if not f.nullable and column.null_count:
            raise Fallback(f"NULL in non-nullable column {f.name}")
    return pa.Table.from_arrays(rows.columns, schema=expected)


# ---------------------------------------------------------------------------- explain


def explain_rows(
    sql: str, catalog: Catalog, workers: int, fetch: Fetch | None = None
) -> list[tuple[str, str]] | None:
    """The plan of `sql` as (plan_key, plan_value) rows, or None when no rule here plans it
    (a broadcast plan needs `fetch`: it is chosen by row counts)."""
    return _explain(sql, catalog, workers, "", 0, fetch)


def _explain(
    sql: str, catalog: Catalog, workers: int, prefix: str, depth: int, fetch: Fetch | None = None
) -> list[tuple[str, str]] | None:
    found = cached_plan(sql, catalog)
    if found is None:
        from laminardb.plan import broadcast_run

        return broadcast_run.explain_rows(sql, catalog, workers, fetch, prefix)
    if found is not None and _refusal(found, catalog) is not None:
        return None  # execution would gather it: so does explain
    if isinstance(found, LocalPlan):
        local = found
        shards = range(workers) if local.shards is None else local.shards
        return [
            (f"{prefix}distributed_plan", local.rule.value),
            (f"{prefix}workers", ",".join(str(i) for i in shards)),
            (f"{prefix}worker_sql", local.worker_sql),
            (f"{prefix}merge", local.merge_sql or "concatenate the workers' rows"),
        ]
    if isinstance(found, JoinAggPlan):
        outer, _, worker_sql = join_aggregate_plan(found, catalog)
        named = dict(distributed.explain_rows(outer, workers, checked=True))
        named["distributed_plan"] = "two-phase over a co-partitioned join"
        named["worker_sql"] = worker_sql
        return [(prefix + k, v) for k, v in named.items()]
    if found is None or depth >= MAX_DEPTH:
        return None
    rows = [(f"{prefix}distributed_plan", "compound")]
    for piece in found.pieces:
        inner = f"{prefix}{piece.name}."
        split_plan = distributed.cached_plan(piece.sql, catalog)
        if split_plan is not None:
            if distributed.refusal(split_plan, catalog) is not None:
                return None
            shown = distributed.explain_rows(split_plan, workers, checked=True)
            rows += [(inner + k, v) for k, v in shown]
            continue
        nested = _explain(piece.sql, catalog, workers, inner, depth + 1, fetch)
        if nested is None:
            return None
        rows += nested
    rows.append((f"{prefix}merge", found.merge_sql))
    return rows


def _refusal(found: Planned, catalog: Catalog) -> str | None:
    """Why execution would gather `found` before asking any worker (its probe refuses it;
    cached as execution caches it), or None when it would run it."""
    try:
        relations = _relations(found.relations, catalog)
        if isinstance(found, CompoundPlan):
            probe(found.sql, None, relations, empty=False)
        elif isinstance(found, JoinAggPlan):
            probe(found.sql, None, relations, empty=False)
            outer, derived, _ = join_aggregate_plan(found, catalog)
            reason = distributed.refusal(outer, derived)
            if reason is not None:
                return reason
        elif found.rule is not LocalRule.ONE_WORKER:
            probe(found.sql, found.worker_sql, relations, empty=True)
    except Fallback as exc:
        return str(exc)
    return None
