"""Run `broadcast` plans: count rows, choose the big side, ship the small ones, merge.

`extended` calls `run` when no shard-local, compound or co-partitioned-aggregate plan
applies, before the gather path. Steps, each of which hands the query back to the gather
path (returns None / raises `Fallback`) on any surprise:

1. Count the rows of every relation a candidate reads: one `count(*)` query per worker
   (answered from the engine's statistics), plus one on the home worker of each table;
   reused while nothing is written (`Cluster.epoch`).
2. `broadcast.choose` the candidate with the biggest big side whose small relations are
   small enough; probe the query over empty relations in a native engine (the single
   instance's verdict and the answer's schema), as every rule does.
3. Fetch each small relation once (only the columns the query names) and serialise it
   once as Arrow IPC (kept while nothing is written); copy it into every asked worker's shared-memory arena (the path
   inserts take) and send `BroadcastQuery`: the worker creates its private temporary
   sources, runs the worker SQL and drops them (workers/broadcast.py).
4. Concatenate the workers' rows and merge (ORDER BY / LIMIT / DISTINCT, or split's
   two-phase merge for an aggregate), under the probe's schema.

The caller holds the cluster lock (as for every query), so the arenas are free.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from laminardb.api.errors import LaminarError
from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan import broadcast, distributed, extended
from laminardb.plan.broadcast import BroadcastPlan, Small
from laminardb.plan.distributed import Fallback, Fetch
from laminardb.plan.split import PARTIALS
from laminardb.plan.sqltext import NoLocal
from laminardb.wire import arrow_ipc, protocol

_ALIGN = 64
Shipment = list[tuple[Small, pa.Buffer]]


def run(sql: str, catalog: Catalog, fetch: Fetch) -> pa.Table | None:
    """The answer of `sql` through a broadcast plan, or None when none applies (no
    candidate, nothing small enough, or `fetch` cannot ship: it has no cluster)."""
    chosen = _choose(sql, catalog, fetch)
    if chosen is None:
        return None
    return execute(chosen[0], catalog, fetch)


def answer(sql: str, catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Like `run`, raising `Fallback` when no broadcast plan applies (for compound pieces)."""
    found = run(sql, catalog, fetch)
    if found is None:
        raise Fallback(f"no broadcast plan for {sql!r}")
    return found


def _choose(
    sql: str, catalog: Catalog, fetch: Fetch
) -> tuple[BroadcastPlan, dict[str, int]] | None:
    found = broadcast.candidates(sql, catalog)
    if not found or getattr(fetch, "cluster", None) is None:
        return None
    names = sorted({n for plan in found for n in plan.relations})
    counts = cached_counts([_relation(n, catalog) for n in names], fetch)
    chosen = broadcast.choose(found, counts, threshold(fetch))
    return None if chosen is None else (chosen, counts)


def threshold(fetch: Fetch) -> int:
    """The connection's `broadcast_rows` (its cluster's options), else the module default."""
    options = getattr(getattr(fetch, "cluster", None), "options", None)
    value = getattr(options, "broadcast_rows", None)
    return broadcast.BROADCAST_ROWS if value is None else int(value)


class _Memo:
    """What one cluster's workers held at `epoch` (`Cluster.epoch`): row counts and the
    shipped form of small relations. Both stay true until the epoch moves on (any insert,
    load, DDL or restart), so a repeated join skips the count and the fetch round trips."""

    SHIPMENTS = 16

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.counts: dict[tuple[object, ...], int] = {}
        self.shipped: dict[tuple[object, ...], pa.Buffer] = {}

    def keep(self, key: tuple[object, ...], data: pa.Buffer) -> None:
        while len(self.shipped) >= self.SHIPMENTS:
            del self.shipped[next(iter(self.shipped))]
        self.shipped[key] = data


_memo_lock = threading.Lock()
_memos: weakref.WeakKeyDictionary[Any, _Memo] = weakref.WeakKeyDictionary()


def _memo(fetch: Fetch) -> _Memo | None:
    """The memo of `fetch`'s cluster at its current epoch (None: no cluster, nothing kept)."""
    cluster = getattr(fetch, "cluster", None)
    epoch = getattr(cluster, "epoch", None)
    if cluster is None or epoch is None:
        return None
    with _memo_lock:
        memo = _memos.get(cluster)
        if memo is None or memo.epoch != epoch:
            memo = _memos[cluster] = _Memo(epoch)
    return memo


def _current(memo: _Memo, fetch: Fetch) -> bool:
    """Whether nothing was written since `memo` was taken (what was read meanwhile holds)."""
    return memo.epoch == getattr(getattr(fetch, "cluster", None), "epoch", None)


def cached_counts(relations: Sequence[Relation], fetch: Fetch) -> dict[str, int]:
    """`count_rows`, from the counts taken at the cluster's current epoch when all are known."""
    memo = _memo(fetch)
    keys = [r.definition() for r in relations]
    if memo is not None and all(k in memo.counts for k in keys):
        return {r.name: memo.counts[k] for r, k in zip(relations, keys, strict=True)}
    counts = count_rows(relations, fetch)
    if memo is not None and _current(memo, fetch):
        for r, k in zip(relations, keys, strict=True):
            memo.counts[k] = counts[r.name]
    return counts


def count_rows(relations: Sequence[Relation], fetch: Fetch) -> dict[str, int]:
    """Rows of each relation: one query per worker for the spread ones, one on each table's home."""
    counts: dict[str, int] = {}
    spread = [r for r in relations if r.home is None]
    if spread:
        items = ", ".join(
            f"(SELECT count(*) FROM {r.name}) AS {quote(f'c{i}')}" for i, r in enumerate(spread)
        )
        for table in fetch(f"SELECT {items}", None):
            for r, column in zip(spread, table.columns, strict=True):
                counts[r.name] = counts.get(r.name, 0) + sum(
                    int(v or 0) for v in column.to_pylist()
                )
    for r in relations:
        if r.home is not None:
            (table,) = fetch(f"SELECT count(*) FROM {r.name}", [r.home])
            counts[r.name] = int(table.column(0)[0].as_py() or 0) if table.num_rows else 0
    return counts


def _relation(name: str, catalog: Catalog) -> Relation:
    relation = catalog.get(name)
    if relation is None:
        raise Fallback(f"relation {name} is gone")
    return relation


# ---------------------------------------------------------------------------- execution


def execute(plan: BroadcastPlan, catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Run `plan`; raises on any problem (`Fallback` for the planner's own reasons)."""
    cluster = getattr(fetch, "cluster", None)
    if cluster is None:
        raise Fallback("no cluster to ship the small relations to")
    relations = [_relation(n, catalog) for n in plan.relations]
    if plan.aggregate is not None:
        return _execute_aggregate(plan, catalog, fetch, cluster, relations)
    expected, worker = extended.probe(plan.sql, plan.probe_sql, relations, empty=True)
    shipment = prepare(plan, catalog, fetch)
    names = [f"_p{i}" for i in range(len(worker))]
    partial = pa.schema([pa.field(n, f.type) for n, f in zip(names, worker, strict=True)])
    parts = []
    for table in ship(cluster, shipment, plan.worker_sql, plan.shards):
        if table.schema.types != partial.types:
            raise Fallback(f"worker types {table.schema.types} differ from {partial.types}")
        parts.append(pa.Table.from_arrays(table.columns, schema=partial))
    rows = pa.concat_tables(parts) if parts else partial.empty_table()
    if plan.merge_sql is not None:
        rows = extended.merge(plan.merge_sql, {PARTIALS: rows})
    return extended.conform(rows, expected)


def _execute_aggregate(
    plan: BroadcastPlan, catalog: Catalog, fetch: Fetch, cluster: Any, relations: list[Relation]
) -> pa.Table:
    """Split's two-phase plan of the aggregate, each worker running its partials over its
    part of the broadcast join."""
    assert plan.aggregate is not None
    expected, _ = extended.probe(plan.sql, None, relations, empty=False)
    outer, derived, worker_sql = extended.join_aggregate_plan(plan.aggregate, catalog)
    private = _private(worker_sql, plan)
    shipment = prepare(plan, catalog, fetch)

    def over_the_join(sql: str, shards: list[int] | None) -> Sequence[pa.Table]:
        if sql != outer.worker_sql:
            raise Fallback("the outer plan asked for other SQL")
        return ship(cluster, shipment, private, None if shards is None else tuple(shards))

    return extended.conform(distributed.execute(outer, derived, over_the_join), expected)


def _private(worker_sql: str, plan: BroadcastPlan) -> str:
    try:
        return broadcast.private_sql(worker_sql, {s.name: s.private for s in plan.small})
    except NoLocal as exc:
        raise Fallback(str(exc)) from None


def prepare(plan: BroadcastPlan, catalog: Catalog, fetch: Fetch) -> Shipment:
    """Each small relation's shipped columns, fetched once and serialised as Arrow IPC,
    typed as its temporary source declares them (the relation's types, nullable); Fallback
    when one holds more than `BROADCAST_ROWS` rows (at most that many more are fetched).
    Reused while the cluster's epoch stays the same (nothing was written since)."""
    memo = _memo(fetch)
    out: Shipment = []
    for small in plan.small:
        relation = _relation(small.name, catalog)
        limit = threshold(fetch)
        key = (*relation.definition(), limit, *small.columns)
        data = None if memo is None else memo.shipped.get(key)
        if data is None:
            data = _fetch_small(relation, small, limit, fetch)
            if memo is not None and _current(memo, fetch):
                memo.keep(key, data)
        out.append((small, data))
    return out


def _fetch_small(relation: Relation, small: Small, limit: int, fetch: Fetch) -> pa.Buffer:
    columns = ", ".join(quote(c) for c in small.columns)
    shards = None if relation.home is None else [relation.home]
    parts = list(fetch(f"SELECT {columns} FROM {relation.name} LIMIT {limit + 1}", shards))
    if sum(p.num_rows for p in parts) > limit:  # grown since it was counted
        raise Fallback(f"{small.name} holds more than {limit} rows")
    schema = pa.schema([pa.field(c, relation.schema.field(c).type) for c in small.columns])
    for part in parts:
        if part.schema.types != schema.types:
            raise Fallback(f"{small.name} came back as {part.schema.types}")
    table = pa.concat_tables(
        [pa.Table.from_arrays(p.columns, schema=schema) for p in parts]
    ).combine_chunks()
    return arrow_ipc.dumps(table)


def ship(
    cluster: Any, shipment: Shipment, sql: str, shards: tuple[int, ...] | None
) -> list[pa.Table]:
    """Copy `shipment` into each worker's arena, run `sql` there with it; rows in shard order.
    Every asked worker has answered (or is gone) when this returns or raises, so the
    arenas are free again."""
    needed = sum(_aligned(data.size) for _, data in shipment)
    targets = list(range(len(cluster.workers)) if shards is None else shards)
    if any(needed > cluster.workers[shard].arena.size for shard in targets):
        raise Fallback(f"{needed} bytes to broadcast do not fit the arena")
    relations: list[protocol.TempRelation] = []
    offset = 0
    for small, data in shipment:
        relations.append(protocol.TempRelation(small.private, small.ddl, offset, data.size))
        offset += _aligned(data.size)
    for shard in targets:
        view = np.frombuffer(cluster.workers[shard].arena.view, dtype=np.uint8)
        for relation, (_, data) in zip(relations, shipment, strict=True):
            view[relation.offset : relation.offset + relation.length] = np.frombuffer(
                data, dtype=np.uint8
            )
        del view
    replies = cluster.broadcast(lambda rid: protocol.BroadcastQuery(rid, sql, relations), targets)
    tables = [arrow_ipc.loads(r.data.buffer) for r in replies]
    if any(protocol.SWALLOWED in (t.schema.metadata or {}) for t in tables):
        raise Fallback("a worker's engine swallowed a run-time error")  # gathered: as native
    return tables


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


# ---------------------------------------------------------------------------- explain


def explain_rows(
    sql: str, catalog: Catalog, workers: int, fetch: Fetch | None, prefix: str = ""
) -> list[tuple[str, str]] | None:
    """The broadcast plan execution would follow, as (plan_key, plan_value) rows, or None
    when it would not run one (the small relations are fetched to count the bytes shipped)."""
    if fetch is None:
        return None
    try:
        chosen = _choose(sql, catalog, fetch)
        if chosen is None:
            return None
        plan, counts = chosen
        relations = [_relation(n, catalog) for n in plan.relations]
        shipped = sum(data.size for _, data in prepare(plan, catalog, fetch))
        asked = list(range(workers)) if plan.shards is None else list(plan.shards)
        if plan.aggregate is not None:
            extended.probe(plan.sql, None, relations, empty=False)
            outer, derived, worker_sql = extended.join_aggregate_plan(plan.aggregate, catalog)
            if distributed.refusal(outer, derived) is not None:
                return None
            named = dict(distributed.explain_rows(outer, workers, checked=True))
            kind, worker, merge = (
                "broadcast, two-phase aggregation over the join",
                _private(worker_sql, plan),
                named.get("merge", ""),
            )
        else:
            extended.probe(plan.sql, plan.probe_sql, relations, empty=True)
            kind, worker = "broadcast", plan.worker_sql
            merge = plan.merge_sql or "concatenate the workers' rows"
    except (Fallback, NoLocal, LaminarError):
        return None
    except Exception:  # the native engine's own errors: execution would gather too
        return None
    rows = [
        ("distributed_plan", kind),
        ("workers", ",".join(str(i) for i in asked)),
        ("big_relation", f"{plan.big} ({counts.get(plan.big, 0):,} rows, stays on its workers)"),
        ("broadcast", broadcast.describe(plan, counts)),
        (
            "bytes_shipped",
            f"{shipped:,} bytes to each of {len(asked)} workers ({shipped * len(asked):,} in all)",
        ),
        ("worker_sql", worker),
        ("merge", merge),
    ]
    return [(prefix + k, v) for k, v in rows]
