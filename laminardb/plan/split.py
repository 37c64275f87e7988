"""Split one SELECT into SQL that every worker runs over its shard plus a merge over the partials.

Pure logic (SQL and catalog in, `Plan` out, no I/O); `distributed` executes plans. Queries
over exactly one relation, without joins, subqueries, CTEs, window functions or set
operations (DESIGN.md decision 6, issue 3). Every plan is also routed: a key equality or
IN-list limits the workers asked (`routing`). The rules, tried in this order:

* `DISTINCT`: SELECT DISTINCT without aggregates. Workers run it (with ORDER BY and LIMIT,
  keeping their first offset+limit distinct rows); the merge runs DISTINCT again, sorts, cuts.

* `KEYED_GROUP`: GROUP BY containing every partition-key column of a keyed source. All rows
  of a group live on one worker, so the whole query (HAVING included) runs per worker and the
  partials are concatenated; the merge applies the final ORDER BY / LIMIT / OFFSET.
* `TWO_PHASE` (`twophase`): other aggregations of COUNT, SUM, MIN, MAX, AVG, BOOL_AND, BOOL_OR (also with
  FILTER (WHERE ...)), COUNT(DISTINCT x) / APPROX_DISTINCT(x) and VAR/STDDEV. Workers group by
  the group keys and compute partial aggregates; the merge groups the partials again
  (COUNT becomes a COALESCEd SUM of counts, AVG a SUM of sums over a SUM of counts) and then
  evaluates expressions over aggregates, HAVING, ORDER BY and LIMIT. A distinct count makes
  workers group by its argument too (one row per distinct (group, x)); the merge counts
  (HyperLogLog ignores duplicates, so APPROX_DISTINCT over distinct values is the engine's
  own answer). VAR/STDDEV ship (count, mean, var_pop) per worker and only `fastmerge`
  merges them (Chan's formula); inside expressions, HAVING or ORDER BY, `moments` adds
  their values per group to the partials first and the SQL merge reads them.
  When the merge is simple, `Plan.fast` lets `fastmerge` compute it in process.
* `PUSHDOWN`: no aggregation. Workers run the filter and projection; with ORDER BY and LIMIT
  each worker also keeps only its top `offset + limit` rows, and the merge sorts and cuts.

Anything else gives None and the caller gathers (never a wrong answer). Two guards keep the
rules exact: user expressions are copied into the generated SQL as the user wrote them (text
spans from the statement tokenizer; sqlglot's AST is used to understand the query, never to
print it, because printing changes DataFusion semantics, e.g. `^` or `round`), and the native
engine has the last word on names, types and errors (`distributed` runs the original query on
an empty copy of the relation first and only then asks the workers).

Native facts relied on (laminardb 0.17.0): identifiers are case-sensitive and never folded
(`K` and `k` differ, aliases keep their case); ORDER BY prefers a select alias over an input
column, also inside expressions, while GROUP BY and HAVING prefer input columns; ASC sorts
NULLs last and DESC first; a top-level ORDER BY without LIMIT is refused when one of its keys
is a column name (`ORDER BY k`) but not when all are expressions (`ORDER BY (k)`, `k + 1`,
`1`), so merges put every sort key in parentheses to add no refusal of their own.
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

from laminardb.cluster.catalog import Catalog, quote
from laminardb.plan import routing, twophase
from laminardb.plan.fastmerge import SortKey, Spec
from laminardb.plan.layout import NoPlan, Query, analyse, groups_by_key, order_target
from laminardb.plan.plans import PARTIALS, Plan, Rule, limits

__all__ = ["PARTIALS", "Plan", "Rule", "plan"]


def plan(sql: str, catalog: Catalog) -> Plan | None:
    """The distributed plan of one SELECT, or None when no rule of this slice applies."""
    try:
        return _plan(sql, catalog)
    except NoPlan:
        return None


def _plan(sql: str, catalog: Catalog) -> Plan:
    """The first rule that applies (keyed group, then two-phase, then pushdown), routed to
    the shards a key equality or IN-list allows."""
    query = analyse(sql, catalog)
    found = _rule(query)
    return dataclasses.replace(found, vshards=routing.key_shards(query))


def _rule(query: Query) -> Plan:
    """The plan of the first rule that applies."""
    grouped = bool(query.group) or query.having is not None
    aggregates = any(True for _ in query.tree.find_all(exp.AggFunc))
    shards = None if query.relation.home is None else (query.relation.home,)
    if query.distinct:
        if grouped or aggregates:
            raise NoPlan("SELECT DISTINCT over an aggregation")
        return _distinct(query, shards)
    if grouped and groups_by_key(query):
        return _per_worker(query, Rule.KEYED_GROUP, shards)
    if grouped or aggregates:
        return twophase.two_phase(query, shards)
    for order in query.order:
        if any(isinstance(n, exp.Anonymous) for n in order.node.walk()):
            raise NoPlan("unknown function in ORDER BY")
    return _per_worker(query, Rule.PUSHDOWN, shards)


# ---------------------------------------------------------------------------- rules 1 and 2


def _per_worker(query: Query, rule: Rule, shards: tuple[int, ...] | None) -> Plan:
    """Rules 1 and 2: the query runs per worker as written, plus hidden sort columns; with
    ORDER BY and LIMIT each worker keeps its top offset+limit rows."""
    visible = [f"_p{i}" for i in range(len(query.items))]
    hidden: list[str] = []
    hidden_sql: list[str] = []
    keys: list[str] = []
    sort_keys: list[SortKey] = []
    for order in query.order:
        target = order_target(query, order)
        if target is None:
            name = f"_h{len(hidden)}"
            hidden.append(name)
            hidden_sql.append(f"{query.text(order.span)} AS {quote('__ldb' + name)}")
        else:
            name = visible[target]
        keys.append(f"({quote(name)}) {order.direction}")
        sort_keys.append(SortKey(name, order.desc, order.nulls_first))
    select = ", ".join([item.full_text for item in query.items] + hidden_sql)
    worker = f"SELECT {select} {query.body}"
    if query.limit is not None:
        if query.order:
            worker += f" ORDER BY {query.order_text}"
        worker += limits(query.limit + (query.offset or 0), None)
    merge: str | None = None
    fast: Spec | None = None
    if query.order or query.limit is not None or query.offset is not None:
        merge = f"SELECT {', '.join(quote(v) for v in visible)} FROM {PARTIALS}"
        if keys:
            merge += f" ORDER BY {', '.join(keys)}"
        merge += limits(query.limit, query.offset)
        outputs = tuple(("col", v) for v in visible)
        fast = Spec(False, (), outputs, tuple(sort_keys), query.limit, query.offset)
    columns = tuple(visible + hidden)
    return Plan(rule, query.sql, query.relation.name, shards, worker, columns, merge, fast=fast)


def _distinct(query: Query, shards: tuple[int, ...] | None) -> Plan:
    """SELECT DISTINCT: each worker removes its duplicates (and, with ORDER BY and LIMIT,
    keeps its first offset+limit distinct rows), the merge removes those across workers,
    sorts and cuts. Every ORDER BY key must name a select item (as native requires)."""
    names = ", ".join(item.full_text for item in query.items)
    visible = [f"_p{i}" for i in range(len(query.items))]
    keys: list[str] = []
    sort_keys: list[SortKey] = []
    for order in query.order:
        target = order_target(query, order)
        if target is None:
            raise NoPlan("DISTINCT ordered by something that is not a select item")
        keys.append(f"({quote(visible[target])}) {order.direction}")
        sort_keys.append(SortKey(f"_o{target}", order.desc, order.nulls_first))
    worker = f"SELECT DISTINCT {names} {query.body}"
    if query.limit is not None:
        if query.order:
            worker += f" ORDER BY {query.order_text}"
        worker += limits(query.limit + (query.offset or 0), None)
    cols = ", ".join(quote(v) for v in visible)
    merge = f"SELECT DISTINCT {cols} FROM {PARTIALS}"
    if keys:
        merge += f" ORDER BY {', '.join(keys)}"
    merge += limits(query.limit, query.offset)
    outputs = tuple(("key", v) for v in visible)
    fast = Spec(True, tuple(visible), outputs, tuple(sort_keys), query.limit, query.offset)
    return Plan(
        Rule.DISTINCT,
        query.sql,
        query.relation.name,
        shards,
        worker,
        tuple(visible),
        merge,
        fast=fast,
    )
