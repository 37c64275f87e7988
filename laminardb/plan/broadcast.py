"""Broadcast joins: every worker joins its shard of one big relation with all of the small ones.

Pure logic (SQL, catalog and row counts in, `BroadcastPlan` out, no I/O); `broadcast_run`
executes the plans. A SELECT reads one "big" relation B (any partitioning: keyed,
round-robin, or a table on one worker) and one or more "small" relations S. When every row
of the answer depends only on one row of B and the whole of the S relations, each worker
can run the query over its shard of B and a full copy of every S, and the answer is the
concatenation of the workers' answers. That holds when:

* B is named once, as a relation of the top-level FROM clause (never inside a sub-query);
* every join that has B on one side keeps B's rows: INNER / CROSS joins, `B LEFT JOIN S`,
  `S RIGHT JOIN B` (never a FULL join, `S LEFT JOIN B` or `B RIGHT JOIN S`, which would
  emit S rows once per worker); joins among small relations only (before B joins) are free;
* sub-queries (IN, EXISTS, scalar, derived tables) read only small relations, so they give
  the same answer on every worker (NOT IN included: each worker sees all of S);
* nothing combines B rows across workers: no aggregate, window or GROUP BY unless it names
  every partition-key column of a keyed B (groups then never span workers). DISTINCT and
  the top-level ORDER BY / LIMIT / OFFSET are merged in the coordinator (`joins`' merge).

An aggregate over such a join that is not grouped by B's key becomes a two-phase
aggregation over the join (`joinagg`'s split of the query into the join and the aggregate
over it, `split`'s partials and merge), each worker running the partials over its part of
the join.

Which relation is B is decided at run time from row counts (`choose`): the biggest valid
candidate, when the small ones hold at most `BROADCAST_ROWS` rows together and fewer than B.
Each small relation travels under a private name (`__bc_<n>`) with only the columns the
query names (all of them under `*`, USING or NATURAL); the worker SQL is the query with
each small relation's name replaced by its private name, aliased to the name it had.
The probe in `broadcast_run` has the last word, as for every rule: the native engine must
accept the query over empty relations, else the query is gathered.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan import joinagg, joins
from laminardb.plan.distributed import Fallback, catalog_key, sql_type
from laminardb.plan.layout import NEVER_SPLIT
from laminardb.plan.sqltext import NoLocal, name_of, parse, tokens
from laminardb.plan.tokens import Token

PREFIX = "__bc_"
"""Private names of shipped relations start with this (`workers/broadcast.py` checks it)."""

BROADCAST_ROWS = int(os.environ.get("LAMINARDB_BROADCAST_ROWS", "100000"))
"""At most this many rows (all small relations together) are broadcast (process-wide; the
environment variable `LAMINARDB_BROADCAST_ROWS` sets it at import, 0 turns broadcasting
off). Shipping 100k rows costs each worker a copy of a few MB out of shared memory and a
hash-table build of a few ms, against gathering the whole big relation (which must hold
more rows than that, or the small side would not be the small one). Above it the gather
path answers."""

# Nodes of the top-level SELECT (sub-queries excluded) that a per-worker run cannot keep exact.
_REFUSED: tuple[type[exp.Expr], ...] = (
    *(t for t in NEVER_SPLIT if t not in (exp.Subquery, exp.Exists)),
    exp.TableSample,
)


@dataclass(frozen=True)
class Small:
    """A small relation as shipped: its catalog `name`, its `private` name on the workers,
    the `columns` shipped and the statement that creates it there."""

    name: str
    private: str
    columns: tuple[str, ...]
    ddl: str


@dataclass(frozen=True)
class BroadcastPlan:
    """Each worker of `shards` (None: all) runs `worker_sql` with every relation of `small`
    shipped to it; `probe_sql` is that SQL over the catalog names (for the native probe).
    The rows are renamed `_p0`... and concatenated, then `merge_sql` runs over them as
    `PARTIALS` when it is not None. With `aggregate` set the plan is a two-phase aggregation
    over the join instead (`worker_sql` / `probe_sql` / `merge_sql` unused)."""

    sql: str
    relations: tuple[str, ...]
    big: str
    small: tuple[Small, ...]
    shards: tuple[int, ...] | None
    probe_sql: str
    worker_sql: str
    merge_sql: str | None
    aggregate: joinagg.JoinAggPlan | None = None


# ---------------------------------------------------------------------------- candidates


def candidates(sql: str, catalog: Catalog) -> tuple[BroadcastPlan, ...]:
    """A plan for each relation that could be the big side of `sql` (empty: none can),
    cached while the catalog keeps its definitions."""
    key = catalog_key(catalog)
    with _lock:
        hit = _cache.get(sql)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        found = _candidates(sql, catalog)
    except NoLocal:
        found = ()
    with _lock:
        _cache[sql] = (key, found)
        _cache.move_to_end(sql)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return found


CACHE_SIZE = 1024
_lock = threading.Lock()
_cache: collections.OrderedDict[str, tuple[tuple[object, ...], tuple[BroadcastPlan, ...]]] = (
    collections.OrderedDict()
)


def choose(
    found: tuple[BroadcastPlan, ...], counts: Mapping[str, int], limit: int = BROADCAST_ROWS
) -> BroadcastPlan | None:
    """The candidate whose big side holds the most rows, among those whose small relations
    hold at most `limit` rows together and fewer than the big one (None: no candidate)."""
    best: BroadcastPlan | None = None
    if limit <= 0:
        return None  # broadcasting is off
    for plan in found:
        small = sum(counts.get(s.name, limit + 1) for s in plan.small)
        big = counts.get(plan.big, 0)
        if small > limit or big <= small:
            continue
        if best is None or big > counts.get(best.big, 0):
            best = plan
    return best


@dataclass
class _Side:
    """A FROM item of the top-level SELECT: its relation (None: a derived table) and alias."""

    node: exp.Expr
    relation: Relation | None
    alias: str


def _candidates(sql: str, catalog: Catalog) -> tuple[BroadcastPlan, ...]:
    toks = tokens(sql)
    tree = parse(sql)
    if not isinstance(tree, exp.Select):
        raise NoLocal("not a plain SELECT")
    relations = joins.relations_read(tree, catalog)  # refuses CTEs and unknown names
    if len(relations) < 2:
        raise NoLocal("reads fewer than two relations")
    if any(n.startswith(PREFIX) for n in catalog.names()):
        raise NoLocal(f"a relation name starts with {PREFIX}")
    for arg in ("laterals", "windows", "qualify", "into", "kind", "hint", "connect", "prewhere"):
        if tree.args.get(arg):
            raise NoLocal(arg)
    sides = _sides(tree, catalog)
    out: list[BroadcastPlan] = []
    for index, side in enumerate(sides):
        if side.relation is None:
            continue
        try:
            out.append(_plan_for(sql, toks, tree, sides, index, relations))
        except (NoLocal, Fallback):
            continue
    return tuple(out)


def _sides(tree: exp.Select, catalog: Catalog) -> list[_Side]:
    from_ = tree.args.get("from_") or tree.args.get("from")
    if not isinstance(from_, exp.From):
        raise NoLocal("no FROM")
    items = [from_.this, *(j.this for j in tree.args.get("joins") or [])]
    sides: list[_Side] = []
    for node in items:
        alias = node.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.args.get("columns"):
            raise NoLocal("alias with column names")
        if isinstance(node, exp.Table):
            name = name_of(node.this)
            relation = catalog.get(name)
            if relation is None or relation.name != name:
                raise NoLocal(f"{name} is not a relation of the catalog")
            shown = name_of(alias.this) if isinstance(alias, exp.TableAlias) else name
            sides.append(_Side(node, relation, shown))
        elif isinstance(node, exp.Subquery):
            sides.append(_Side(node, None, ""))
        else:
            raise NoLocal(f"FROM item {type(node).__name__}")
    return sides


def _plan_for(
    sql: str,
    toks: list[Token],
    tree: exp.Select,
    sides: list[_Side],
    index: int,
    relations: list[Relation],
) -> BroadcastPlan:
    """The plan with side `index` as the big relation (NoLocal when it cannot be)."""
    big = sides[index].relation
    assert big is not None
    if sum(1 for t in tree.find_all(exp.Table) if name_of(t.this) == big.name) != 1:
        raise NoLocal(f"{big.name} is named more than once")
    _check_joins(tree, index)
    names = tuple(r.name for r in relations)
    small_relations = [r for r in relations if r.name != big.name]
    small = tuple(_small(r, f"{PREFIX}{i}", tree) for i, r in enumerate(small_relations))
    mapping = {s.name: s.private for s in small}
    shards = None if big.home is None else (big.home,)
    top = list(_top_level(tree))
    for node in top:
        if isinstance(node, _REFUSED):
            raise NoLocal(type(node).__name__)
    aggregated = bool(tree.args.get("group") or tree.args.get("having")) or any(
        isinstance(n, exp.AggFunc) and not isinstance(n.parent, exp.Window) for n in top
    )
    windows = [n for n in top if isinstance(n, exp.Window)]
    distinct = tree.args.get("distinct")
    if distinct is not None and (not isinstance(distinct, exp.Distinct) or distinct.args.get("on")):
        raise NoLocal("DISTINCT ON")
    big_side = joins._Side(sides[index].alias, big)
    keyed = bool(big.partition_by) and big.home is None
    try:
        if aggregated:
            group = tree.args.get("group")
            if (
                not keyed
                or not isinstance(group, exp.Group)
                or any(
                    group.args.get(a) for a in ("grouping_sets", "cube", "rollup", "all", "totals")
                )
            ):
                raise NoLocal("aggregation not grouped by the big relation's key")
            items = [joins._resolve_group_item(tree, n, [big_side]) for n in group.expressions]
            joins._require_key(items, [big_side], "GROUP BY")
        for window in windows:
            if window.args.get("alias") or not window.args.get("partition_by") or not keyed:
                raise NoLocal("window not partitioned by the big relation's key")
            joins._require_key(list(window.args["partition_by"]), [big_side], "PARTITION BY")
    except NoLocal:
        if not aggregated or windows or distinct or big.home is not None:
            raise
        return _aggregate(sql, tree, names, big.name, small, mapping)
    local = joins._co_partitioned(sql, toks, tree, names, distinct is not None)
    return BroadcastPlan(
        sql,
        names,
        big.name,
        small,
        shards,
        local.worker_sql,
        private_sql(local.worker_sql, mapping),
        local.merge_sql,
    )


def _aggregate(
    sql: str,
    tree: exp.Select,
    names: tuple[str, ...],
    big: str,
    small: tuple[Small, ...],
    mapping: dict[str, str],
) -> BroadcastPlan:
    """Two-phase aggregation over the broadcast join (`joinagg`'s split of the query)."""
    if any(isinstance(n, exp.Select) and n is not tree for n in tree.walk()):
        raise NoLocal("sub-query in an aggregate over a join")
    inner, outer = joinagg.split_join(sql)
    found = joinagg.JoinAggPlan(sql, names, inner, outer)
    private_sql(inner, mapping)  # the join's text must rename cleanly
    return BroadcastPlan(sql, names, big, small, None, inner, "", None, found)


def _check_joins(tree: exp.Select, index: int) -> None:
    """Every join with the big side (`index`) on one side keeps the big side's rows."""
    for position, join in enumerate(tree.args.get("joins") or [], start=1):
        method = str(join.args.get("method") or "").upper()
        if method not in ("", "NATURAL") or join.args.get("global_") or join.args.get("global"):
            raise NoLocal("join method")
        kind = str(join.args.get("kind") or "").upper()
        side = str(join.args.get("side") or "").upper()
        if kind not in ("", "INNER", "OUTER", "CROSS", "SEMI", "ANTI"):
            raise NoLocal(f"{kind} join")
        if index > position:
            continue  # a join among small relations only: the same on every worker
        if side == "FULL":
            raise NoLocal("FULL join with the big relation")
        if index < position and side == "RIGHT":
            raise NoLocal("RIGHT join keeping a small relation")
        if index == position and side == "LEFT":
            raise NoLocal("LEFT join keeping a small relation")
        if index == position and kind in ("SEMI", "ANTI") and side != "RIGHT":
            raise NoLocal("semi-join keeping a small relation")


def _top_level(node: exp.Expr) -> Iterator[exp.Expr]:
    """The nodes of a SELECT outside its sub-queries (which read small relations only)."""
    for child in node.iter_expressions():
        if isinstance(child, exp.Subquery | exp.Query):
            continue
        yield child
        yield from _top_level(child)


def _small(relation: Relation, private: str, tree: exp.Select) -> Small:
    """A small relation with the columns the query may name (all under `*`, USING, NATURAL)."""
    named = {
        name_of(c.this) for c in tree.find_all(exp.Column) if isinstance(c.this, exp.Identifier)
    }
    star = any(
        isinstance(n, exp.Star) and not isinstance(n.parent, exp.Count) for n in tree.walk()
    ) or any(j.args.get("using") or j.args.get("method") for j in tree.find_all(exp.Join))
    columns = [c for c in relation.schema.names if star or c in named]
    if not columns:
        columns = relation.schema.names[:1]  # the rows still count (CROSS JOIN, EXISTS)
    if len(set(columns)) != len(columns):
        raise NoLocal(f"{relation.name} has duplicate column names")
    declared = ", ".join(f"{quote(c)} {sql_type(relation.schema.field(c).type)}" for c in columns)
    return Small(relation.name, private, tuple(columns), f"CREATE SOURCE {private} ({declared})")


# ---------------------------------------------------------------------------- renaming


def private_sql(sql: str, mapping: Mapping[str, str]) -> str:
    """`sql` with every relation of `mapping` replaced by its private name, aliased to the
    name it had when it had no alias (so `s.col` still resolves); NoLocal when a relation
    cannot be found in the text."""
    tree = parse(sql)
    spans: list[tuple[int, int, str]] = []
    for table in tree.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog"):
            continue
        name = name_of(table.this)
        if name not in mapping:
            continue
        meta = table.this.meta
        if "start" not in meta or "end" not in meta:
            raise NoLocal("relation without position")
        start, end = int(meta["start"]), int(meta["end"]) + 1
        if sql[start:end] not in (name, quote(name)):
            raise NoLocal("relation name not found in the text")
        text = mapping[name] if table.args.get("alias") else f"{mapping[name]} AS {quote(name)}"
        spans.append((start, end, text))
    out = sql
    for start, end, text in sorted(spans, reverse=True):
        out = out[:start] + text + out[end:]
    return out


# ---------------------------------------------------------------------------- explain


def describe(plan: BroadcastPlan, counts: Mapping[str, int]) -> str:
    """The shipped relations as text: `s (10 rows: a, b) as __bc_0; ...`."""
    return "; ".join(
        f"{s.name} ({counts.get(s.name, 0):,} rows: {', '.join(s.columns)}) as {s.private}"
        for s in plan.small
    )
