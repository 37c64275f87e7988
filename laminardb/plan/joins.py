"""Queries that run whole on every worker: co-partitioned joins, keyed windows, UNION ALL.

Pure logic (SQL and catalog in, `LocalPlan` out, no I/O); `extended` executes the plans.
`split` handles SELECTs over one relation; this module takes the shapes it refuses where the
answer over all rows is the concatenation of the answers over each worker's rows
("shard-local"), so each worker runs the query as written and the coordinator only merges
the top-level ORDER BY / LIMIT / OFFSET (and a UNION's DISTINCT). Two rules:

* `ONE_WORKER`: every relation the query reads is a table on the same home worker, so that
  worker holds all the rows and runs the whole query (any shape) verbatim.
* `CO_PARTITIONED`: every SELECT of the query (one, or the branches of a UNION [ALL])
  reads keyed sources joined on their whole partition keys (`a.k = b.k` conjuncts in ON
  pairing every key column, with types that route equal values to the same worker), or one
  relation, optionally filtered by semi-joins (`k IN (SELECT k FROM keyed ...)` as a WHERE
  conjunct, on one-column keys); and whatever combines rows (GROUP BY, DISTINCT, window
  PARTITION BY) names every key column of a relation that no outer join null-extends. Equal keys then live on
  one worker, so matches, groups and window partitions never span workers; an outer join's
  unmatched rows appear exactly once, on their own worker.

Anything else is None (then `compound` or the gather path answers; never a guess). The
probe in `extended` has the last word: the query over empty relations must be accepted by
the native engine and give no rows, else the plan is dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan.layout import NEVER_SPLIT
from laminardb.plan.split import PARTIALS
from laminardb.plan.sqltext import NoLocal, conjuncts, limits, name_of, parse, tail, tokens
from laminardb.plan.tokens import Token


class LocalRule(enum.Enum):
    """Which rule of this module produced a plan."""

    ONE_WORKER = "one-worker"
    CO_PARTITIONED = "co-partitioned"


@dataclass(frozen=True)
class LocalPlan:
    """Every worker of `shards` (None: all) runs `worker_sql`; its columns are renamed by
    position to `_p0`, `_p1`, ... and concatenated; `merge_sql` (when not None) runs over
    that as `PARTIALS`. `relations` are the catalog relations the query reads."""

    rule: LocalRule
    sql: str
    relations: tuple[str, ...]
    shards: tuple[int, ...] | None
    worker_sql: str
    merge_sql: str | None


# ---------------------------------------------------------------------------- relations


def relations_read(tree: exp.Expr, catalog: Catalog) -> list[Relation]:
    """The catalog relations `tree` names (NoLocal for a name that is not one, or a CTE)."""
    if any(isinstance(n, exp.With | exp.CTE) for n in tree.walk()):
        raise NoLocal("CTE")
    found: dict[str, Relation] = {}
    for table in tree.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog") or not table.this:
            raise NoLocal("qualified or computed relation")
        name = name_of(table.this)
        relation = catalog.get(name)
        if relation is None or relation.name != name:
            raise NoLocal(f"{name} is not a relation of the catalog")
        found[name] = relation
    return list(found.values())


# ---------------------------------------------------------------------------- planning


def plan(sql: str, catalog: Catalog) -> LocalPlan | None:
    """The shard-local plan of `sql`, or None when no rule of this module applies."""
    try:
        return _plan(sql, catalog)
    except NoLocal:
        return None


def _plan(sql: str, catalog: Catalog) -> LocalPlan:
    toks = tokens(sql)
    tree = parse(sql)
    if not isinstance(tree, exp.Query):
        raise NoLocal("not a query")
    if any(isinstance(n, exp.With | exp.CTE) for n in tree.walk()):
        raise NoLocal("CTE")
    relations = relations_read(tree, catalog)
    if not relations:
        raise NoLocal("reads no relation")
    names = tuple(r.name for r in relations)
    homes = {r.home for r in relations}
    if len(homes) == 1 and None not in homes:
        home = homes.pop()
        assert home is not None
        return LocalPlan(LocalRule.ONE_WORKER, sql, names, (home,), sql, None)
    distinct = _check_set_tree(tree, catalog)
    return _co_partitioned(sql, toks, tree, names, distinct)


def _check_set_tree(tree: exp.Expr, catalog: Catalog) -> bool:
    """Check every SELECT of a UNION tree (or the one SELECT); True for UNION (distinct)."""
    kinds: set[bool] = set()

    def walk(node: exp.Expr, top: bool) -> exp.Select:
        if isinstance(node, exp.Subquery) and not top:
            if node.args.get("alias") or any(node.args.get(a) for a in ("order", "limit")):
                raise NoLocal("aliased or limited branch")
            return walk(node.this, False)
        if isinstance(node, exp.Union):
            if not top and any(node.args.get(a) for a in ("order", "limit", "offset")):
                raise NoLocal("ORDER BY / LIMIT inside a UNION")
            kinds.add(bool(node.args.get("distinct")))
            first = walk(node.this, False)
            walk(node.expression, False)
            return first
        if isinstance(node, exp.Select):
            if not top and any(node.args.get(a) for a in ("order", "limit", "offset")):
                raise NoLocal("ORDER BY / LIMIT inside a UNION branch")
            _check_select(node, catalog)
            return node
        raise NoLocal(f"{type(node).__name__} is not split here")

    walk(tree, True)
    if len(kinds) > 1:
        raise NoLocal("UNION mixed with UNION ALL")
    return kinds == {True}


_REFUSED: tuple[type[exp.Expr], ...] = (*NEVER_SPLIT, exp.TableSample)


@dataclass
class _Side:
    """One relation of a SELECT: its alias, relation, and whether an outer join may give
    rows where it is all NULL (its key columns then do not pin a row to a worker)."""

    alias: str
    relation: Relation
    null_extended: bool = False


def _check_select(select: exp.Select, catalog: Catalog) -> None:
    """NoLocal unless the SELECT's answer is the concatenation of its per-worker answers."""
    for arg in ("laterals", "windows", "qualify", "into", "kind", "hint", "connect", "prewhere"):
        if select.args.get(arg):
            raise NoLocal(f"{arg}")
    sides = _sides(select, catalog)
    semi = _semi_joins(select, sides, catalog)
    for node in select.walk():
        if id(node) in semi:
            continue
        if isinstance(node, _REFUSED):
            raise NoLocal(f"{type(node).__name__}")
        if isinstance(node, exp.Select) and node is not select:
            raise NoLocal("nested SELECT")
    aggregated = bool(select.args.get("group") or select.args.get("having")) or any(
        isinstance(n, exp.AggFunc) and not isinstance(n.parent, exp.Window)
        for n in select.walk()
        if id(n) not in semi
    )
    windows = list(select.find_all(exp.Window))
    distinct = select.args.get("distinct")
    if (
        len(sides) == 1
        and sides[0].relation.partition_by == ()
        and (aggregated or windows or distinct)
    ):
        raise NoLocal("rows of an unkeyed relation are combined")
    if aggregated:
        group = select.args.get("group")
        if not isinstance(group, exp.Group) or any(
            group.args.get(a) for a in ("grouping_sets", "cube", "rollup", "all", "totals")
        ):
            raise NoLocal("aggregation without a plain GROUP BY")
        resolved = [_resolve_group_item(select, n, sides) for n in group.expressions]
        _require_key(resolved, sides, "GROUP BY")
    if distinct:
        if not isinstance(distinct, exp.Distinct) or distinct.args.get("on"):
            raise NoLocal("DISTINCT ON")
        _require_key([_unalias(n) for n in select.expressions], sides, "DISTINCT")
    for window in windows:
        if window.args.get("alias") or not window.args.get("partition_by"):
            raise NoLocal("window without PARTITION BY")
        _require_key(list(window.args["partition_by"]), sides, "PARTITION BY")


def _semi_joins(select: exp.Select, sides: list[_Side], catalog: Catalog) -> set[int]:
    """The nodes (by id) of co-partitioned semi-joins: WHERE conjuncts `key IN (SELECT key
    FROM r WHERE ...)` where `key` is the whole one-column partition key of an outer side and
    of r. Matches then live on the row's own worker; a NULL in the sub-query (only ever on
    one worker) turns a non-match into NULL instead of false, which a WHERE conjunct filters
    out alike. NOT IN, or IN under OR / NOT, would see that difference and are refused."""
    where = select.args.get("where")
    if not isinstance(where, exp.Where):
        return set()
    found: set[int] = set()
    for conjunct in conjuncts(where.this):
        query = conjunct.args.get("query") if isinstance(conjunct, exp.In) else None
        if (
            isinstance(conjunct, exp.In)
            and isinstance(query, exp.Subquery)
            and isinstance(query.this, exp.Select)
            and isinstance(conjunct.this, exp.Column)
            and not any(conjunct.args.get(a) for a in ("expressions", "field", "unnest"))
            and not query.args.get("alias")
            and _is_key_subquery(query.this, conjunct.this, sides, catalog)
        ):
            found |= {id(n) for n in query.walk()}
    return found


def _is_key_subquery(
    sub: exp.Select, outer: exp.Column, sides: list[_Side], catalog: Catalog
) -> bool:
    """Whether `sub` selects the one-column key of one keyed relation, filtered by its own
    columns only (uncorrelated), and `outer` is the same-routed key of an outer side."""
    clauses = ("joins", "group", "having", "distinct", "order", "limit", "offset", "with_")
    if any(sub.args.get(a) for a in (*clauses, "windows", "qualify", "laterals", "with")):
        return False
    from_ = sub.args.get("from_") or sub.args.get("from")
    if not isinstance(from_, exp.From) or len(sub.expressions) != 1:
        return False
    try:
        side = _side(from_.this, catalog)
    except NoLocal:
        return False
    key = side.relation.partition_by
    item = sub.expressions[0]
    if side.relation.home is not None or len(key) != 1 or not isinstance(item, exp.Column):
        return False
    for node in sub.walk():
        if node is not sub and isinstance(node, (*_REFUSED, exp.Select, exp.AggFunc, exp.Window)):
            return False
        if isinstance(node, exp.Column):
            qualifier = node.args.get("table")
            if isinstance(node.this, exp.Star) or node.args.get("db"):
                return False
            if qualifier is not None and name_of(qualifier) != side.alias:
                return False
            if name_of(node.this) not in side.relation.schema.names:
                return False
    owner = _owner(outer, sides)
    if owner is None or name_of(item.this) != key[0]:
        return False
    theirs = owner.relation.partition_by
    return theirs == (name_of(outer.this),) and _same_route(
        owner.relation.schema.field(theirs[0]).type, side.relation.schema.field(key[0]).type
    )


def _unalias(node: exp.Expr) -> exp.Expr:
    return node.this if isinstance(node, exp.Alias) else node


def _sides(select: exp.Select, catalog: Catalog) -> list[_Side]:
    """The relations of the FROM clause, checked to be co-partitioned by their joins."""
    from_ = select.args.get("from_") or select.args.get("from")
    if not isinstance(from_, exp.From):
        raise NoLocal("no FROM")
    sides = [_side(from_.this, catalog)]
    for join in select.args.get("joins") or []:
        side = _side(join.this, catalog)
        if any(join.args.get(a) for a in ("using", "method", "global_", "global")):
            raise NoLocal("USING / NATURAL join")
        kind = str(join.args.get("kind") or "").upper()
        outer = str(join.args.get("side") or "").upper()
        if kind not in ("", "INNER", "OUTER") or outer not in ("", "LEFT", "RIGHT", "FULL"):
            raise NoLocal(f"{kind} {outer} join")
        on = join.args.get("on")
        if not isinstance(on, exp.Expr):
            raise NoLocal("join without ON")
        _check_co_partitioned(on, sides, side)
        if outer in ("LEFT", "FULL"):
            side.null_extended = True
        if outer in ("RIGHT", "FULL"):
            for s in sides:
                s.null_extended = True
        sides.append(side)
    if len({s.alias for s in sides}) != len(sides):
        raise NoLocal("a relation alias is used twice")
    if len(sides) > 1 and any(not s.relation.partition_by for s in sides):
        raise NoLocal("a joined relation is not keyed (or is a table on one worker)")
    return sides


def _side(node: exp.Expr, catalog: Catalog) -> _Side:
    if not isinstance(node, exp.Table):
        raise NoLocal("FROM item is not a relation")
    name = name_of(node.this)
    relation = catalog.get(name)
    if relation is None or relation.name != name:
        raise NoLocal(f"{name} is not a relation of the catalog")
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias):
        if alias.args.get("columns"):
            raise NoLocal("alias with column names")
        return _Side(name_of(alias.this), relation)
    return _Side(name, relation)


def _owner(col: exp.Column, sides: list[_Side]) -> _Side | None:
    """The side a column reference belongs to (None when it names no single side's column)."""
    table = col.args.get("table")
    if col.args.get("db") or col.args.get("catalog") or isinstance(col.this, exp.Star):
        return None
    name = name_of(col.this)
    if table is not None:
        found = [s for s in sides if s.alias == name_of(table)]
    else:
        found = [s for s in sides if name in s.relation.schema.names]
    if len(found) != 1 or name not in found[0].relation.schema.names:
        return None
    return found[0]


def _same_route(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether equal values of types `a` and `b` are routed to the same worker
    (`ingest.partition`: integers as int64, floats as float64, strings as UTF-8 bytes)."""
    if a == b:
        return True
    for family in (pa.types.is_integer, pa.types.is_floating):
        if family(a) and family(b):
            return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(f(a) for f in strings) and any(f(b) for f in strings)


def _check_co_partitioned(on: exp.Expr, before: list[_Side], new: _Side) -> None:
    """The ON clause pairs every key column of `new` with the same-position key column of
    one earlier side, by `=` conjuncts."""
    pairs: set[tuple[str, str, str]] = set()
    for conjunct in conjuncts(on):
        if not isinstance(conjunct, exp.EQ):
            continue
        left, right = conjunct.this, conjunct.expression
        if not isinstance(left, exp.Column) or not isinstance(right, exp.Column):
            continue
        sides = [*before, new]
        a, b = _owner(left, sides), _owner(right, sides)
        if a is None or b is None:
            continue
        if b is new and a is not new:
            pairs.add((a.alias, name_of(left.this), name_of(right.this)))
        elif a is new and b is not new:
            pairs.add((b.alias, name_of(right.this), name_of(left.this)))
    key = new.relation.partition_by
    for other in before:
        theirs = other.relation.partition_by
        if len(theirs) != len(key) or not key:
            continue
        if all((other.alias, o, n) in pairs for o, n in zip(theirs, key, strict=True)) and all(
            _same_route(other.relation.schema.field(o).type, new.relation.schema.field(n).type)
            for o, n in zip(theirs, key, strict=True)
        ):
            return
    raise NoLocal(f"{new.alias} is not joined on its whole partition key")


def _resolve_group_item(select: exp.Select, node: exp.Expr, sides: list[_Side]) -> exp.Expr:
    """A GROUP BY item as an input expression: positions and aliases name select items
    (native prefers an input column over an alias of the same name)."""
    items = select.expressions
    if isinstance(node, exp.Literal) and not node.is_string and str(node.this).isdigit():
        position = int(str(node.this))
        if not 1 <= position <= len(items):
            raise NoLocal("GROUP BY position out of range")
        return _unalias(items[position - 1])
    if isinstance(node, exp.Column) and not node.args.get("table") and _owner(node, sides) is None:
        name = name_of(node.this)
        found = [i for i in items if isinstance(i, exp.Alias) and i.alias == name]
        if len(found) == 1:
            return _unalias(found[0])
    return node


def _require_key(nodes: list[exp.Expr], sides: list[_Side], clause: str) -> None:
    """Some side that no outer join null-extends has every partition-key column among
    `nodes` as plain column references."""
    named: set[tuple[str, str]] = set()
    for node in nodes:
        if isinstance(node, exp.Column):
            owner = _owner(node, sides)
            if owner is not None:
                named.add((owner.alias, name_of(node.this)))
    for side in sides:
        key = side.relation.partition_by
        if key and not side.null_extended and all((side.alias, k) in named for k in key):
            return
    raise NoLocal(f"{clause} does not name a whole partition key")


# ---------------------------------------------------------------------------- the merge


def _co_partitioned(
    sql: str, toks: list[Token], tree: exp.Expr, names: tuple[str, ...], distinct: bool
) -> LocalPlan:
    """Worker SQL: the query (a top-N per worker with ORDER BY and LIMIT); the merge sorts,
    cuts, and for a UNION removes duplicates across workers."""
    cut = tail(sql, toks, tree)
    keys = [_merge_key(item, tree) for item in cut.order]
    worker = cut.core
    if cut.limit is not None:
        if cut.order:
            worker += " ORDER BY " + ", ".join(
                sql[item[0].start : item[-1].end] for item in cut.order
            )
        worker += limits(cut.limit + (cut.offset or 0), None)
    merge: str | None = None
    if distinct or keys or cut.limit is not None or cut.offset is not None:
        merge = f"SELECT {'DISTINCT ' if distinct else ''}* FROM {PARTIALS}"
        if keys:
            merge += f" ORDER BY {', '.join(keys)}"
        merge += limits(cut.limit, cut.offset)
    return LocalPlan(LocalRule.CO_PARTITIONED, sql, names, None, worker, merge)


def _first_select(tree: exp.Expr) -> exp.Select:
    while not isinstance(tree, exp.Select):
        if isinstance(tree, exp.Union | exp.Subquery):
            tree = tree.this
        else:
            raise NoLocal("no first SELECT")
    return tree


def _output_names(tree: exp.Expr) -> list[str | None]:
    """The output name of each select item of the first SELECT (None: an expression);
    `*` expands to every column of the relations in FROM order."""
    select = _first_select(tree)
    out: list[str | None] = []
    for item in select.expressions:
        if isinstance(item, exp.Star) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            raise NoLocal("ORDER BY a name with * in the select list")
        if isinstance(item, exp.Alias):
            out.append(name_of(item.args.get("alias")))
        elif isinstance(item, exp.Column):
            out.append(name_of(item.this))
        else:
            out.append(None)
    return out


def _qualified_output(tree: exp.Expr, table: str, column: str) -> int:
    """The position of the one select item that is the column `table.column` (aliased or
    not) in a plain SELECT; NoLocal when there is not exactly one."""
    if not isinstance(tree, exp.Select):
        raise NoLocal("qualified ORDER BY over a set operation")
    _output_names(tree)  # refuses `*` items (they would shift the positions)
    found = [
        i
        for i, item in enumerate(tree.expressions)
        if isinstance(node := _unalias(item), exp.Column)
        and isinstance(node.args.get("table"), exp.Identifier)
        and name_of(node.args["table"]) == table
        and name_of(node.this) == column
    ]
    if len(found) != 1:
        raise NoLocal("ORDER BY names no single select item")
    return found[0]


def _merge_key(item: list[Token], tree: exp.Expr) -> str:
    """One ORDER BY item over the partial columns: it must name an output by position, by
    its name (one output of that name) or as the qualified column of one item, else NoLocal."""
    body = list(item)
    nulls_first: bool | None = None
    if len(body) > 2 and body[-2].is_word("NULLS") and body[-1].is_word("FIRST", "LAST"):
        nulls_first = body[-1].is_word("FIRST")
        body = body[:-2]
    desc = False
    if body and body[-1].is_word("ASC", "DESC"):
        desc = body[-1].is_word("DESC")
        body = body[:-1]
    if len(body) == 3 and body[1].is_punct(".") and body[0].is_ident and body[2].is_ident:
        position = _qualified_output(tree, body[0].ident, body[2].ident)
    elif len(body) != 1:
        raise NoLocal("ORDER BY an expression")
    elif (tok := body[0]).kind == "number" and tok.text.isdigit():
        position = int(tok.text) - 1
        if position < 0:
            raise NoLocal("ORDER BY position out of range")
    elif tok.kind in ("word", "quoted"):
        found = [i for i, name in enumerate(_output_names(tree)) if name == tok.ident]
        if len(found) != 1:
            raise NoLocal("ORDER BY names no single output")
        position = found[0]
    else:
        raise NoLocal("ORDER BY an expression")
    if nulls_first is None:
        nulls_first = desc
    direction = ("DESC" if desc else "ASC") + (" NULLS FIRST" if nulls_first else " NULLS LAST")
    return f"({quote(f'_p{position}')}) {direction}"
