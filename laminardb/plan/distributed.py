"""Execute a `split.Plan`: worker SQL on the shards, the merge in a fresh native engine.

Exactness comes first (DESIGN.md decision 6): before any worker is asked, the original query
runs in a native engine over an empty copy of its relation (a probe, cached per query and
relation definition). That probe is the single
instance's verdict on the query: if it raises, the query is left to the gather path (which
raises the native error); if it succeeds, its schema is the answer's schema, so names,
types and nullability are the native ones whatever the merge computed them with. Anything
unexpected on the way (a worker error, a partial type the merge engine cannot declare, a
merged type that differs from the probe's) also hands the query back to the gather path,
which answers exactly, only slower. `run` returns None in all those cases; `execute` raises.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan import fastmerge, moments, ranks, routing, split
from laminardb.plan.split import PARTIALS, Plan, Rule

log = logging.getLogger("laminardb.plan")

Fetch = Callable[[str, list[int] | None], Sequence[pa.Table]]
"""`fetch(sql, shards)`: the result of `sql` on each worker of `shards` (None: all)."""


CACHE_SIZE = 1024
T = TypeVar("T")
"""Plans and probes kept per process (dashboards repeat queries; planning parses the SQL,
a probe costs two native calls)."""

_lock = threading.Lock()


class Fallback(Exception):
    """The plan cannot answer exactly; the gather path must (the reason is the message)."""


def run(sql: str, catalog: Catalog, fetch: Fetch) -> pa.Table | None:
    """The answer of `sql` through a distributed plan, or None when the caller must gather
    (no rule applies, the native engine rejects the query, or the plan could not be exact)."""
    found = cached_plan(sql, catalog)
    if found is None:  # joins, set operations, sub-queries (planner-joins' rules)
        from laminardb.plan import extended

        return extended.run(sql, catalog, fetch)
    try:
        return execute(found, catalog, fetch)
    except Exception as exc:
        log.debug("distributed plan (%s) handed back to gather: %s", found.rule.value, exc)
        return None


_plans: collections.OrderedDict[str, tuple[Plan, tuple[object, ...]]] = collections.OrderedDict()


_refused: collections.OrderedDict[str, tuple[object, ...]] = collections.OrderedDict()


def catalog_key(catalog: Catalog) -> tuple[object, ...]:
    """What every relation's definition is made of, cheap to build and compare (no parsing,
    no schema printing; the schema object compares by identity first): a refusal is only
    remembered while this is the same, since any relation can turn one into a plan."""
    found: list[object] = []
    for name in catalog.names():
        r = catalog.get(name)
        if r is not None:
            found += (name, r.kind, r.create_sql, len(r.alters), r.partition_by, r.home, r.schema)
    return tuple(found)


def refused(cache: collections.OrderedDict[str, tuple[object, ...]], sql: str, key: object) -> bool:
    """Whether `sql` was refused (no plan) under the catalog `key` before."""
    with _lock:
        return cache.get(sql) == key


def remember_refusal(
    cache: collections.OrderedDict[str, tuple[object, ...]], sql: str, key: tuple[object, ...]
) -> None:
    """Note that no rule planned `sql` under the catalog `key` (bounded, oldest out first)."""
    with _lock:
        cache[sql] = key
        cache.move_to_end(sql)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)


def cached_plan(sql: str, catalog: Catalog) -> Plan | None:
    """`split.plan(sql, catalog)`, remembered while the relation it reads keeps the same
    definition (a repeated query skips parsing); a refusal is remembered while the whole
    catalog keeps its definitions (`catalog_key`)."""
    with _lock:
        hit = _plans.get(sql)
    if hit is not None:
        relation = catalog.get(hit[0].relation)
        if relation is not None and relation.definition() == hit[1]:
            return hit[0]
    key = catalog_key(catalog)
    if refused(_refused, sql, key):
        return None
    found = split.plan(sql, catalog)
    if found is None:
        remember_refusal(_refused, sql, key)
    relation = None if found is None else catalog.get(found.relation)
    if found is not None and relation is not None:
        with _lock:
            _plans[sql] = (found, relation.definition())
            _plans.move_to_end(sql)
            while len(_plans) > CACHE_SIZE:
                _plans.popitem(last=False)
    return found


def execute(plan: Plan, catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Run `plan` and return the answer with the native schema; raises on any problem
    (`Fallback` for the planner's own reasons, the native error for a rejected query)."""
    relation = catalog.get(plan.relation)
    if relation is None:
        raise Fallback(f"relation {plan.relation} is gone")
    probe = _probe(plan, relation)
    shards = _shards(plan, getattr(fetch, "workers", None))
    if plan.vshards is not None and shards is not None and len(shards) == 1:
        # Every row the query can read is on this worker: it answers the query as written.
        return _conform(fetch(plan.sql, shards)[0], probe.answer)
    weight = ranks.weight_column(plan.fast, plan.staged)
    learnt = _learnt_key(plan, relation) if weight is not None else ()
    if weight is not None and ranks.is_wide(learnt):
        raise Fallback(_WIDE)
    fetched = fetch(plan.worker_sql, shards)
    if plan.one_row_each and any(t.num_rows == 0 for t in fetched):
        return probe.answer.empty_table()  # a swallowed run-time error (`Plan.one_row_each`)
    parts = [_conform_partial(t, probe.partials) for t in fetched]
    partials = pa.concat_tables(parts) if parts else probe.partials.empty_table()
    if weight is not None:
        ranks.learn(learnt, partials, weight)
    if plan.merge_sql is None and plan.fast is None:
        return _conform(partials, probe.answer)
    merged = _fast(plan, probe, partials)
    if merged is None:
        if plan.merge_sql is None:
            raise Fallback("only the in-process merge merges it, and it declined")
        if plan.staged is not None:  # VAR/STDDEV/MEDIAN per group first (`moments`)
            partials, probe = _staged(plan.staged, probe, partials)
        merged = _merge(plan.merge_sql, probe, partials)
    return _conform(merged, probe.answer)


_WIDE = "MEDIAN / PERCENTILE_CONT over mostly distinct values: gathering is faster (plan/ranks.py)"


def _learnt_key(plan: Plan, relation: Relation) -> tuple[object, ...]:
    return (plan.worker_sql, *relation.definition())


def _staged(staged: moments.Staged, probe: _Probe, partials: pa.Table) -> tuple[pa.Table, _Probe]:
    """The partials widened by `moments.attach`, and the probe that declares them."""
    widened = moments.attach(staged, partials)
    if widened is None:
        raise Fallback("the per-group VAR/STDDEV/MEDIAN merge declined")
    schema = _nullable(widened.schema)
    return widened, _Probe(probe.answer, schema, schema)


def _shards(plan: Plan, workers: object) -> list[int] | None:
    """The workers to ask (None: all): the relation's home, or those owning the routed
    virtual shards when the worker count is known."""
    if plan.shards is not None:
        return list(plan.shards)
    if plan.vshards is not None and isinstance(workers, int) and workers > 0:
        return routing.workers_of(plan.vshards, workers)
    return None


def _fast(plan: Plan, probe: _Probe, partials: pa.Table) -> pa.Table | None:
    """The merge computed in process (`fastmerge`), or None when the plan has no simple
    merge or pyarrow's answer could differ from the engine's (types included)."""
    if plan.fast is None:
        return None
    try:
        merged = fastmerge.run(plan.fast, partials)
    except (pa.ArrowException, ValueError, TypeError) as exc:  # e.g. a type no kernel takes
        log.debug("in-process merge declined: %s", exc)
        return None
    if merged is None or merged.schema.types != probe.answer.types:
        return None
    return merged


@dataclass(frozen=True)
class _Probe:
    """What the native engine says about a plan over an empty copy of its relation: the
    answer's schema, the worker SQL's (renamed to the partial columns) and the schema the
    partials are declared with in the merge engine."""

    answer: pa.Schema
    partials: pa.Schema
    storage: pa.Schema


_probes: collections.OrderedDict[tuple[object, ...], _Probe | Fallback] = collections.OrderedDict()


def _probe(plan: Plan, relation: Relation) -> _Probe:
    """The plan's probe, from the cache when the query and the relation's definition are
    the same; a refusal (`Fallback`, or the native error as one) is cached too."""
    key = (plan.sql, plan.worker_sql, *relation.definition())
    return memo_probe(_probes, _lock, key, lambda: _run_probe(plan, relation))


def memo_probe(
    cache: collections.OrderedDict[tuple[object, ...], T | Fallback],
    lock: threading.Lock,
    key: tuple[object, ...],
    run: Callable[[], T],
) -> T:
    """`run()` once per key (most recently used kept, CACHE_SIZE at most); a refusal, a
    `Fallback` or any error of the probe as one, is cached and raised again."""
    with lock:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
    if found is None:
        try:
            found = run()
        except Fallback as exc:
            found = exc
        except Exception as exc:
            found = Fallback(f"{type(exc).__name__}: {exc}")
        with lock:
            cache[key] = found
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
    if isinstance(found, Fallback):
        raise Fallback(str(found))
    return found


def _run_probe(plan: Plan, relation: Relation) -> _Probe:
    """Run the query and the worker SQL over an empty copy of the relation (as the gather
    path declares it) and check that the partials can be merged exactly."""
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        for ddl in relation.gather_ddl():
            engine.execute(ddl)
        answer = engine.sql(plan.sql).to_arrow()
        if plan.rule in (Rule.PUSHDOWN, Rule.DISTINCT) and answer.num_rows:
            raise Fallback("the query aggregates (it has rows on empty input)")
        partials = _renamed(engine.sql(plan.worker_sql).to_arrow().schema, plan)
    finally:
        engine.close()
    if plan.rule is Rule.TWO_PHASE and any(
        pa.types.is_decimal(f.type) for f in partials if f.name.startswith("_a")
    ):
        raise Fallback("decimal partial aggregates (their merged types would differ)")
    storage = _storage(partials, plan.rule)
    if plan.merge_sql is not None:
        for f in storage:
            sql_type(f.type)
    return _Probe(answer.schema, partials, storage)


def _merge(merge_sql: str, probe: _Probe, partials: pa.Table) -> pa.Table:
    """`merge_sql` over the partials, in a fresh engine holding them as `PARTIALS`."""
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        columns = [f"{quote(f.name)} {sql_type(f.type)}" for f in probe.storage]
        engine.execute(f"CREATE SOURCE {PARTIALS} ({', '.join(columns)})")
        declared = engine.schema(PARTIALS)
        if declared.types != probe.storage.types:
            raise Fallback(f"partials declared as {declared.types}, not {probe.storage.types}")
        if partials.num_rows:
            stored = partials.cast(probe.storage).combine_chunks()
            batches = stored.to_batches()
            engine.insert(PARTIALS, batches[0] if len(batches) == 1 else stored)
        merged = engine.sql(merge_sql).to_arrow()
    finally:
        engine.close()
    if probe.storage.types != probe.partials.types:
        merged = merged.cast(pa.schema(list(_nullable(probe.partials))[: merged.num_columns]))
    return merged


def _renamed(schema: pa.Schema, plan: Plan) -> pa.Schema:
    """The worker SQL's schema with the plan's partial column names."""
    if len(schema) != len(plan.partial_columns):
        raise Fallback(f"worker SQL gives {len(schema)} columns, the plan expects more or less")
    return pa.schema(
        [pa.field(n, f.type, f.nullable) for n, f in zip(plan.partial_columns, schema, strict=True)]
    )


def _conform_partial(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A worker's partial with the plan's column names; its types must be the probe's."""
    if [f.type for f in table.schema] != [f.type for f in schema]:
        raise Fallback(f"worker partial types {table.schema.types} differ from {schema.types}")
    return pa.Table.from_arrays(table.columns, schema=_nullable(schema))


def _nullable(schema: pa.Schema) -> pa.Schema:
    """`schema` with every field nullable (the merge engine declares them so)."""
    return pa.schema([f.with_nullable(True) for f in schema])


_STORED_AS: dict[pa.DataType, pa.DataType] = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.decimal128(20, 0),
    pa.large_string(): pa.string(),
    pa.string_view(): pa.string(),
    pa.large_binary(): pa.binary(),
}
"""Types no SQL declares, stored for a merge that only sorts and cuts (rules 1 and 2) as a
type with the same values, order and equality, and cast back after the merge."""


def _storage(schema: pa.Schema, rule: Rule) -> pa.Schema:
    """The schema the partials are kept in, in the merge engine."""
    if rule is Rule.TWO_PHASE:
        return _nullable(schema)
    return pa.schema([pa.field(f.name, _STORED_AS.get(f.type, f.type)) for f in schema])


_SQL_TYPES: dict[pa.DataType, str] = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.float32(): "REAL",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.timestamp("us"): "TIMESTAMP",
    pa.binary(): "BYTEA",
}


def sql_type(t: pa.DataType) -> str:
    """The SQL type the native engine declares as Arrow type `t` (Fallback when none does)."""
    if pa.types.is_decimal128(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    found = _SQL_TYPES.get(t)
    if found is None:
        raise Fallback(f"no SQL type declares {t}")
    return found


def _conform(merged: pa.Table, expected: pa.Schema) -> pa.Table:
    """The merged values under the native schema (names, types, nullability)."""
    if [f.type for f in merged.schema] != [f.type for f in expected]:
        raise Fallback(f"merged types {merged.schema.types} differ from native {expected.types}")
    for column, f in zip(merged.columns, expected, strict=True):
        if not f.nullable and column.null_count:
            raise Fallback(f"NULL in non-nullable column {f.name}")
    return pa.Table.from_arrays(merged.columns, schema=expected)


class ClusterFetch:
    """A `Fetch` over a `Cluster`: one Query request per shard, sent to all at once and
    answered in shard order; `workers` lets plans route by key."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.workers = len(cluster.workers)

    def __call__(self, sql: str, shards: list[int] | None) -> list[pa.Table]:
        from laminardb.wire import arrow_ipc, protocol

        replies = self.cluster.broadcast(lambda rid: protocol.Query(rid, sql), shards)
        tables = [arrow_ipc.loads(r.data.buffer) for r in replies]
        if any(protocol.SWALLOWED in (t.schema.metadata or {}) for t in tables):
            # Native, reading every row, answers such a query as its engine does: gather.
            raise Fallback("a worker's engine swallowed a run-time error")
        return tables


def cluster_fetch(cluster: Any) -> Fetch:
    """A `Fetch` over a `Cluster` (see `ClusterFetch`)."""
    return ClusterFetch(cluster)


def refusal(plan: Plan, catalog: Catalog) -> str | None:
    """Why execution would hand `plan` to the gather path before asking any worker (the
    probe over an empty copy of its relation refuses it, cached as execution caches it),
    or None when it would run (it can still fall back on a surprise in the workers' data)."""
    relation = catalog.get(plan.relation)
    if relation is None:
        return f"relation {plan.relation} is gone"
    try:
        _probe(plan, relation)
    except Fallback as exc:
        return str(exc)
    if ranks.weight_column(plan.fast, plan.staged) is not None and ranks.is_wide(
        _learnt_key(plan, relation)
    ):
        return _WIDE
    return None


def routed_shards(plan: Plan, workers: int) -> list[int] | None:
    """The workers execution asks for `plan` when the cluster has `workers` (None: all)."""
    return _shards(plan, workers)


def worker_schema(plan: Plan, relation: Relation) -> pa.Schema | None:
    """The schema of the rows each worker sends back for `plan` (None: the probe refuses)."""
    try:
        return _probe(plan, relation).partials
    except Fallback:
        return None


CHECKED_AT_RUN_TIME = (
    "checked",
    "at run time: the native engine must accept the query over an empty copy of its "
    "relations with these types, else the rows are gathered",
)
"""The row `explain_rows` adds when nobody checked the plan against the probe."""


def explain_rows(plan: Plan, workers: int, *, checked: bool = False) -> list[tuple[str, str]]:
    """The plan as (plan_key, plan_value) rows, like `gather.explain_rows`; unless `checked`
    (the caller ran `refusal` and got None), a last row says the plan is checked at run time."""
    rows = _explain_rows(plan, workers)
    return rows if checked else [*rows, CHECKED_AT_RUN_TIME]


def _explain_rows(plan: Plan, workers: int) -> list[tuple[str, str]]:
    shards = _shards(plan, workers)
    asked = range(workers) if shards is None else shards
    if plan.vshards is not None and shards is not None and len(shards) == 1:
        return [
            ("distributed_plan", f"{plan.rule.value}, routed by key"),
            ("workers", str(shards[0])),
            ("worker_sql", plan.sql),
            ("merge", "none: one worker holds every row the query reads"),
        ]
    merge = plan.merge_sql or (
        "in process (pyarrow, numpy)" if plan.fast else "concatenate the partials"
    )
    if plan.fast is not None and plan.merge_sql:
        merge += " (computed in process with pyarrow when exact)"
    if plan.staged is not None:
        merge = f"{moments.describe(plan.staged)}; then {merge}"
    return [
        ("distributed_plan", plan.rule.value + (", routed by key" if plan.vshards else "")),
        ("workers", ",".join(str(i) for i in asked)),
        ("worker_sql", plan.worker_sql),
        ("merge", merge),
    ]
