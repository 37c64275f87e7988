"""Two-phase aggregation over a co-partitioned join that is not grouped by a key.

`SELECT g, count(*), sum(d.w) FROM t JOIN d ON t.id = d.id WHERE … GROUP BY g` with `t`
and `d` keyed on `id`: every joined row exists on exactly one worker (`joins`), so the join
is a relation spread over the workers like any source. This rule names that relation
`DERIVED`: the inner query `SELECT <each column the outer clauses use> AS "_jN" FROM … WHERE …`
(the FROM through WHERE text as written) and the outer query, the original with that text
replaced by `FROM DERIVED` and every column reference by its `"_jN"`. `split` plans the
outer query over a relation with the inner query's native schema (two-phase partials,
HAVING, ORDER BY … LIMIT after the merge), and each worker runs split's worker SQL with
`DERIVED` being the inner query as a derived table. `distributed` then merges as it does for
one relation, and the answer takes the original query's native schema.

Exactness: the inner query must be a co-partitioned join by `joins` itself (its rows
concatenated are the join's rows); the original query, the inner and the outer queries are
all probed over empty relations in a native engine, and the merged types must equal the
original's. Anything else (a select alias used as a column, `*`, sub-queries, windows,
DISTINCT, GROUPING SETS …) is refused and gathered, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import joins, sqltext
from laminardb.plan.joins import LocalPlan, LocalRule
from laminardb.plan.layout import NEVER_SPLIT
from laminardb.plan.sqltext import NoLocal, name_of

DERIVED = "__ldb_join"
"""The name of the join's rows in the outer query and in the workers' SQL."""

_ENDS = ("GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "WINDOW", "QUALIFY")
_REFUSED: tuple[type[exp.Expr], ...] = (*NEVER_SPLIT, exp.Window, exp.With, exp.Union)


@dataclass(frozen=True)
class JoinAggPlan:
    """`outer_sql` over `DERIVED` = `inner_sql`, a co-partitioned join of `relations`."""

    sql: str
    relations: tuple[str, ...]
    inner_sql: str
    outer_sql: str


def plan(sql: str, catalog: Catalog) -> JoinAggPlan | None:
    """The plan of an aggregate over a co-partitioned join, or None (see the module doc)."""
    try:
        return _plan(sql, catalog)
    except NoLocal:
        return None


def _plan(sql: str, catalog: Catalog) -> JoinAggPlan:
    inner, outer = split_join(sql)
    local = joins.plan(inner, catalog)
    if (
        not isinstance(local, LocalPlan)
        or local.rule is not LocalRule.CO_PARTITIONED
        or local.merge_sql is not None
        or local.shards is not None
        or local.worker_sql != inner
    ):
        raise NoLocal("the join is not co-partitioned")
    return JoinAggPlan(sql, local.relations, inner, outer)


def split_join(sql: str) -> tuple[str, str]:
    """(the inner query: the join with every column the outer clauses use, the outer query
    over `DERIVED`) of an aggregate over a join; NoLocal for any other shape. The join's
    partitioning is not checked here (`broadcast` uses it for broadcast joins too)."""
    tree = sqltext.parse(sql)
    if not isinstance(tree, exp.Select) or not tree.args.get("joins"):
        raise NoLocal("not a SELECT over a join")
    for node in tree.walk():
        if isinstance(node, _REFUSED) or (isinstance(node, exp.Select) and node is not tree):
            raise NoLocal(f"{type(node).__name__} in a join aggregate")
    if tree.args.get("distinct") or not any(
        isinstance(n, exp.AggFunc) for e in tree.expressions for n in e.walk()
    ):
        raise NoLocal("not an aggregate, or DISTINCT")
    toks = sqltext.tokens(sql)
    depth = sqltext.depths(toks)
    top = [i for i, t in enumerate(toks) if depth[i] == 0]
    starts = [i for i in top if toks[i].is_word("FROM")]
    if not starts:
        raise NoLocal("no FROM")
    first = starts[0]
    ends = [i for i in top if i > first and toks[i].is_word(*_ENDS)]
    last = (ends[0] if ends else len(toks)) - 1
    lo, hi = toks[first].start, toks[last].end
    aliases = {name_of(a.args["alias"]) for a in tree.expressions if isinstance(a, exp.Alias)}
    spans: list[tuple[int, int, str]] = []
    names: dict[str, str] = {}
    for col in tree.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            raise NoLocal("a star outside count(*)")
        start, end = _span(col)
        if lo <= start < hi:
            continue  # ON / WHERE: stays in the inner query as written
        if col.args.get("db") or col.args.get("catalog"):
            raise NoLocal("column with a schema")
        if not col.args.get("table") and name_of(col.this) in aliases:
            if _ordered_by(col, tree):
                continue  # ORDER BY alias: the outer query keeps the alias
            raise NoLocal(f"{name_of(col.this)} may name a select alias")
        text = sql[start:end]
        spans.append((start, end, names.setdefault(text, f'"_j{len(names)}"')))
    if any(isinstance(s, exp.Star) and not isinstance(s.parent, exp.Count) for s in tree.walk()):
        raise NoLocal("a star outside count(*)")
    columns = [f"{text} AS {alias}" for text, alias in names.items()] or ['1 AS "_j0"']
    inner = f"SELECT {', '.join(columns)} {sql[lo:hi]}"
    outer = sql
    for start, end, alias in sorted([*spans, (lo, hi, f"FROM {DERIVED}")], reverse=True):
        outer = outer[:start] + alias + outer[end:]
    return inner, outer


def _ordered_by(col: exp.Column, tree: exp.Select) -> bool:
    """Whether `col` is a whole top-level ORDER BY item (where a name means the alias)."""
    order = tree.args.get("order")
    return isinstance(order, exp.Order) and any(
        isinstance(o, exp.Ordered) and o.this is col for o in order.expressions
    )


def _span(col: exp.Column) -> tuple[int, int]:
    """A column reference's span in the text, from its identifiers' positions."""
    parts = [p for p in (col.args.get("table"), col.this) if p is not None]
    metas = [p.meta for p in parts if isinstance(p, exp.Identifier)]
    if len(metas) != len(parts) or not all("start" in m for m in metas):
        raise NoLocal("column without position")
    return min(int(m["start"]) for m in metas), max(int(m["end"]) for m in metas) + 1


def derived(found: JoinAggPlan, schema: pa.Schema) -> Catalog:
    """A catalog holding only `DERIVED` with the inner query's native schema (its
    definition names the inner query, so plans and probes are cached per join)."""
    catalog = Catalog()
    catalog.add(Relation(DERIVED, "source", schema, f"-- {found.inner_sql}"))
    return catalog


def worker_sql(split_worker_sql: str, found: JoinAggPlan) -> str:
    """Split's worker SQL over `DERIVED`, with `DERIVED` the inner query (NoLocal when the
    relation is not named exactly once)."""
    marker = f"FROM {DERIVED}"
    if split_worker_sql.count(marker) != 1 or split_worker_sql.count(DERIVED) != 1:
        raise NoLocal("the derived relation is not named once")
    return split_worker_sql.replace(marker, f"FROM ({found.inner_sql}) AS {DERIVED}")
