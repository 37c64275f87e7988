"""Projection and filter pushdown for the gather path: what each worker sends back.

Pure logic (SQL and catalog in, one `Fetch` per relation out, no I/O); `gather` executes it.
The gather path answers a query by loading the rows of every relation it reads into one
native engine. Without pushdown each worker returns `SELECT * FROM r`; with it, each worker
returns only the columns the query can reference and only the rows that survive the WHERE
conjuncts that filter `r` alone, so the query then runs in the gather engine unchanged.

Projection (over-approximated from the query's tokens, so no parse subtlety can lose a
column): a column of `r` is shipped when its name (any case) appears as an identifier token
anywhere in the query. `*` / `t.*` in a SELECT ships every column of the relations under its
FROM (any other `*` but `COUNT(*)` ships every column of every relation); NATURAL joins,
column aliases on a relation (`r AS a(x, y)`), a CTE named like `r`, a reference to `r` that
is not exactly its name, and a column named like a relation or alias ship every column. A
relation none of whose columns is referenced ships a row count (one row per worker; the
gather engine gets that many NULLs in one column, which keeps COUNT(*), joins and EXISTS
right). Queries with window functions fetch whole relations: native LAG / LEAD / ROWS
frames read uninitialised memory, so their answer depends on the exact input batches.

Filters (conservative: a wrong answer is far worse than shipping rows). A WHERE conjunct is
pushed to `r` when, in the SELECT whose FROM reads `r`:
* every column in it resolves to that read of `r` (qualified by its alias, or unqualified
  and found in exactly one FROM item, every FROM item being a catalog relation);
* that read is not null-extended by an outer join, and the SELECT has no NATURAL / USING /
  unusual joins;
* it cannot fail at run time and is deterministic (`safesql.condition`: columns, literals,
  comparisons, AND / OR / NOT, IS [NOT] NULL / TRUE / FALSE, IN (literals), BETWEEN, LIKE,
  typed DATE / TIMESTAMP literals, wrapping integer and float arithmetic, with types that
  need no run-time cast that can fail);
* every read of `r` in the query (self-joins, UNION branches, sub-queries) has the same
  conjunct; only the conjuncts common to all reads are pushed;
* and no WHERE / ON / HAVING conjunct anywhere in the query (aggregate conditions aside) can
  fail at run time (`_clauses_safe`). The native engine swallows a run-time error (a
  division by zero, a failed cast) into a partial or empty answer, and its optimizer
  evaluates every single-relation conjunct over all rows of the relation (out of
  sub-queries too); pre-filtering rows would hide them from a failing conjunct and give an
  answer where native gives none.
The conjunct is printed from the parse, fully parenthesized, with columns quoted exactly.
If the workers or the gather engine raise anyway, `gather` runs the query again over whole
relations, so errors are always native's errors for the query as written.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan.distributed import catalog_key
from laminardb.plan.safesql import NoPush, Typer, condition, schema_typer
from laminardb.plan.sqltext import conjuncts
from laminardb.plan.statements import SQLGLOT_DIALECT
from laminardb.plan.tokens import tokenize

ENABLED = True
"""Off: every worker returns `SELECT * FROM r` (the gather path before pushdown; benchmarks)."""


@dataclass(frozen=True)
class Fetch:
    """What each worker returns for `relation`: `columns` (None: every column; empty: only a
    row count) of the rows passing every conjunct of `where` (pushed SQL text)."""

    relation: str
    columns: tuple[str, ...] | None = None
    where: tuple[str, ...] = ()

    @property
    def count_only(self) -> bool:
        return self.columns == ()

    @property
    def pushed(self) -> bool:
        """Whether this fetch differs from `SELECT * FROM relation`."""
        return self.columns is not None or bool(self.where)

    @property
    def sql(self) -> str:
        """The SQL each worker runs for this relation."""
        if self.columns is None:
            select = "*"
        elif not self.columns:
            select = 'count(*) AS "n"'
        else:
            select = ", ".join(quote(c) for c in self.columns)
        where = " WHERE " + " AND ".join(self.where) if self.where else ""
        return f"SELECT {select} FROM {self.relation}{where}"


def full(relation: str) -> Fetch:
    """`SELECT * FROM relation`: every row and column (the gather path without pushdown)."""
    return Fetch(relation)


_CACHE_SIZE = 256
_cache: collections.OrderedDict[tuple[str, tuple[str, ...]], tuple[object, dict[str, Fetch]]] = (
    collections.OrderedDict()
)
_lock = threading.Lock()


def plan(sql: str, catalog: Catalog, tables: Iterable[str]) -> dict[str, Fetch]:
    """One `Fetch` per catalog relation of `tables` (the relations `sql` reads); remembered
    per SQL text while the catalog keeps the same definitions (parsing costs milliseconds)."""
    names = tuple(tables)
    key = (sql, names)
    definitions = catalog_key(catalog)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == definitions and ENABLED:
            _cache.move_to_end(key)
            return dict(hit[1])
    found = _plan(sql, catalog, names)
    if ENABLED:
        with _lock:
            _cache[key] = (definitions, found)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return dict(found)


def _plan(sql: str, catalog: Catalog, tables: Iterable[str]) -> dict[str, Fetch]:
    relations = [r for r in (catalog.get(n) for n in tables) if r is not None]
    names = [r.name for r in relations]
    if not ENABLED:
        return {n: full(n) for n in names}
    try:
        tree, idents = _parse(sql)
    except NoPush:
        return {n: full(n) for n in names}
    out: dict[str, Fetch] = {}
    every_column = _every_column(tree, catalog)
    stars = _star_relations(tree)
    filters_ok = _clauses_safe(tree, catalog)
    for relation in relations:
        if not _declarable(relation) or not _plain_reads(tree, relation):
            out[relation.name] = full(relation.name)
            continue
        columns: tuple[str, ...] | None = None
        if not every_column and stars is not None and relation.name.lower() not in stars:
            columns = tuple(c for c in relation.schema.names if c.lower() in idents)
        where = _filters(tree, relation, catalog) if filters_ok else ()
        out[relation.name] = Fetch(relation.name, columns, where)
    return out


# ---------------------------------------------------------------------------- projection


def _parse(sql: str) -> tuple[exp.Query, set[str]]:
    """The query's parse and its identifier tokens (lower-cased, quotes removed)."""
    if "`" in sql:
        raise NoPush("backquoted identifiers")
    try:
        toks = list(tokenize(sql))
        if not toks or not (toks[0].is_word("SELECT", "WITH") or toks[0].is_punct("(")):
            raise NoPush("not a query")  # e.g. EXPLAIN: sqlglot would only warn and guess
        tree = sqlglot.parse_one(sql, read=SQLGLOT_DIALECT)
    except NoPush:
        raise
    except Exception as exc:
        raise NoPush("cannot parse") from exc
    if not isinstance(tree, exp.Query):
        raise NoPush("not a query")
    if tree.find(exp.Window):
        # Native LAG / LEAD / ROWS frames read uninitialised memory: their output depends on
        # the input batches' exact layout, which only the whole relations reproduce.
        raise NoPush("window functions")
    return tree, {t.ident.lower() for t in toks if t.is_ident}


def _declarable(relation: Relation) -> bool:
    """Whether the gather engine can declare any subset of the relation's columns (else it
    is recreated from its own DDL, which needs every column)."""
    ddl = relation.gather_ddl()
    return len(ddl) == 1 and ddl[0].startswith(f"CREATE SOURCE {relation.name} (")


def _every_column(tree: exp.Expr, catalog: Catalog) -> bool:
    """Whether something in the query can read columns it does not name (ship them all)."""
    names = {t.name.lower() for t in tree.find_all(exp.Table)}
    names |= {a.name.lower() for a in tree.find_all(exp.TableAlias)}
    for join in tree.find_all(exp.Join):
        if join.args.get("method"):  # NATURAL
            return True
    for col in tree.find_all(exp.Column):
        if not col.args.get("table") and col.name.lower() in names:
            return True  # a relation used as a value (a row)
    return False


def _star_relations(tree: exp.Expr) -> set[str] | None:
    """Lower-cased names of the relations a `*` or `t.*` may expand (None: any relation)."""
    found: set[str] = set()
    for node in tree.find_all(exp.Star):
        parent = node.parent
        if isinstance(parent, exp.Count) and parent.this is node:
            continue
        qualifier = ""
        if isinstance(parent, exp.Column):
            qualifier = parent.table
            parent = parent.parent
        if isinstance(parent, exp.Select) and any(s is node for s in _stars_of(parent)):
            for item in _from_items(parent):
                alias = item.args.get("alias")
                name = alias.name if isinstance(alias, exp.TableAlias) else item.name
                if not qualifier or not isinstance(item, exp.Table) or name == qualifier:
                    found |= {t.name.lower() for t in item.find_all(exp.Table)}
            continue
        return None
    return found


def _from_items(select: exp.Select) -> list[exp.Expr]:
    """The FROM item and every joined item of a SELECT."""
    from_ = select.args.get("from_") or select.args.get("from")
    items = [from_.this] if isinstance(from_, exp.From) else []
    return items + [j.this for j in select.args.get("joins") or []]


def _stars_of(select: exp.Select) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    for e in select.expressions:
        if isinstance(e, exp.Star):
            out.append(e)
        elif isinstance(e, exp.Column) and isinstance(e.this, exp.Star):
            out.append(e.this)
    return out


def _plain_reads(tree: exp.Expr, relation: Relation) -> bool:
    """Whether the relation (a plain name) is read at least once, every mention of it is its
    exact name, unqualified, with no column aliases, and no CTE is named like it."""
    if not _PLAIN_NAME.fullmatch(relation.name):
        return False
    low = relation.name.lower()
    for cte in tree.find_all(exp.CTE):
        if cte.alias_or_name.lower() == low:
            return False
    reads = 0
    for table in tree.find_all(exp.Table):
        if table.name.lower() != low:
            continue
        if table.args.get("db") or table.args.get("catalog") or table.name != relation.name:
            return False
        if not isinstance(table.this, exp.Identifier):
            return False
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.args.get("columns"):
            return False
        reads += 1
    return reads > 0


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------- filters


@dataclass
class _Item:
    """One FROM item of a SELECT: its alias, and its relation when it is a catalog relation."""

    alias: str
    relation: Relation | None
    null_extended: bool = False


def _filters(tree: exp.Expr, relation: Relation, catalog: Catalog) -> tuple[str, ...]:
    """The conjuncts every read of `relation` can have pushed (printed), in query order."""
    if any(tree.find_all(exp.Limit, exp.Offset, exp.Fetch)):
        # The engine's LIMIT/OFFSET depends on its input, not only on the rows it keeps:
        # count(*) over `... WHERE k IN (1, 2, 5) ORDER BY k LIMIT 1 OFFSET 1` gives 1 over
        # the whole source and 0 over the two matching rows alone. Same rows in, same answer.
        return ()
    reads = [t for t in tree.find_all(exp.Table) if t.name == relation.name]
    common: list[str] | None = None
    for table in reads:
        select = _select_of(table)
        if select is None:
            return ()
        try:
            items = _items(select, catalog)
        except NoPush:
            return ()
        item = next((i for i, t in items if t is table), None)
        if item is None:
            return ()
        mine = _pushable(select, item, [i for i, _ in items])
        common = mine if common is None else [c for c in common if c in mine]
    return tuple(common or ())


def _select_of(table: exp.Table) -> exp.Select | None:
    """The SELECT whose FROM / JOIN lists `table` directly (None: anywhere else)."""
    parent = table.parent
    if not isinstance(parent, exp.Join | exp.From) or parent.this is not table:
        return None
    select = parent.parent
    return select if isinstance(select, exp.Select) else None


def _items(select: exp.Select, catalog: Catalog) -> list[tuple[_Item, exp.Expr]]:
    """The SELECT's FROM items with their outer-join null extension (NoPush for unusual
    joins)."""
    from_ = select.args.get("from_") or select.args.get("from")
    if not isinstance(from_, exp.From):
        raise NoPush("no FROM")
    items = [(_item(from_.this, catalog), from_.this)]
    for join in select.args.get("joins") or []:
        if any(join.args.get(a) for a in ("using", "method", "global_", "global")):
            raise NoPush("USING / NATURAL join")
        kind = str(join.args.get("kind") or "").upper()
        side = str(join.args.get("side") or "").upper()
        if kind not in ("", "INNER", "OUTER", "CROSS") or side not in ("", "LEFT", "RIGHT", "FULL"):
            raise NoPush(f"{kind} {side} join")
        new = _item(join.this, catalog)
        if side in ("LEFT", "FULL"):
            new.null_extended = True
        if side in ("RIGHT", "FULL"):
            for i, _ in items:
                i.null_extended = True
        items.append((new, join.this))
    aliases = [i.alias for i, _ in items]
    if len(set(aliases)) != len(aliases):
        raise NoPush("an alias is used twice")
    return items


def _item(node: exp.Expr, catalog: Catalog) -> _Item:
    """A FROM item; a catalog relation only when no CTE of the query has its name."""
    alias = node.args.get("alias")
    alias_name = alias.name if isinstance(alias, exp.TableAlias) else ""
    ctes = _cte_names(node.root())
    plain = not node.args.get("db") and not node.args.get("catalog")
    if isinstance(node, exp.Table) and plain and node.name.lower() not in ctes:
        relation = catalog.get(node.name)
        if relation is not None and relation.name == node.name:
            if isinstance(alias, exp.TableAlias) and alias.args.get("columns"):
                raise NoPush("column aliases")
            return _Item(alias_name or node.name, relation)
    return _Item(alias_name or "\0unknown", None)


def _cte_names(root: exp.Expr) -> frozenset[str]:
    """Lower-cased CTE names of a query (kept on the tree: asked for every FROM item)."""
    found = root.meta.get("ldb_ctes")
    if not isinstance(found, frozenset):
        found = frozenset(c.alias_or_name.lower() for c in root.find_all(exp.CTE))
        root.meta["ldb_ctes"] = found
    return found


def _pushable(select: exp.Select, item: _Item, items: list[_Item]) -> list[str]:
    """The WHERE conjuncts of `select` that filter `item` alone, printed for its worker SQL."""
    where = select.args.get("where")
    if item.null_extended or item.relation is None or not isinstance(where, exp.Where):
        return []
    out: list[str] = []
    for conjunct in conjuncts(where.this):
        try:
            columns = [c for c in conjunct.find_all(exp.Column)]
            if not columns or any(_resolve(c, items) is not item for c in columns):
                continue
            out.append(condition(conjunct, schema_typer(item.relation.schema)))
        except NoPush:
            continue
    return out


def _resolve(col: exp.Column, items: list[_Item]) -> _Item:
    """The FROM item a column reference names (NoPush when unsure: it may be correlated)."""
    found = _lookup(col, items)
    if found is None:
        raise NoPush("not a column of this SELECT (correlated?)")
    return found


def _lookup(col: exp.Column, items: list[_Item]) -> _Item | None:
    """The catalog relation item of `items` a column reference names; None when it names
    none of them (an outer SELECT's column); NoPush when that cannot be known."""
    if col.args.get("db") or col.args.get("catalog") or not isinstance(col.this, exp.Identifier):
        raise NoPush("unusual column")
    name = col.this.name
    table = col.args.get("table")
    if table is not None:
        if not isinstance(table, exp.Identifier):
            raise NoPush("unusual qualifier")
        found = [i for i in items if i.alias == table.name]
        if not found:
            return None
        if len(found) != 1 or found[0].relation is None:
            raise NoPush("qualifier of no relation")
        if name not in found[0].relation.schema.names:
            raise NoPush("no such column")
        return found[0]
    if any(i.relation is None for i in items):
        raise NoPush("unqualified column beside a derived table")
    low = name.lower()
    near = [i for i in items if i.relation and low in {n.lower() for n in i.relation.schema.names}]
    if not near:
        return None
    if len(near) != 1 or name not in (near[0].relation.schema.names if near[0].relation else []):
        raise NoPush("ambiguous column")
    return near[0]


def _clauses_safe(tree: exp.Expr, catalog: Catalog) -> bool:
    """Whether no WHERE / ON / HAVING conjunct anywhere in the query can fail at run time.

    The native engine evaluates every single-relation conjunct (its optimizer moves them
    down to the scan, out of sub-queries and views too) over all rows of the relation, and
    turns a run-time error (a division by zero, a failed cast) into a partial or empty
    answer. Pre-filtering a relation would hide such rows from a failing conjunct and give
    an answer where native gives none, so filters are pushed only when nothing can fail.
    Conjuncts with aggregates or window functions run after grouping, over the same groups.
    """
    for select in tree.find_all(exp.Select):
        clauses: list[object] = [select.args.get("where"), select.args.get("having")]
        clauses += [j.args.get("on") for j in select.args.get("joins") or []]
        for clause in clauses:
            if isinstance(clause, exp.Where | exp.Having):
                clause = clause.this
            if not isinstance(clause, exp.Expr):
                continue
            for conjunct in conjuncts(clause):
                if conjunct.find(exp.AggFunc, exp.Window):
                    continue
                try:
                    condition(conjunct, _scope_typer(select, catalog), clause=True)
                except NoPush:
                    return False
    return True


def _scope_typer(select: exp.Select, catalog: Catalog) -> Typer:
    """Types of the columns a SELECT's clauses name, looked up in it and then outwards."""

    def typer(col: exp.Column) -> pa.DataType:
        scope: exp.Expr | None = select
        while scope is not None:
            if isinstance(scope, exp.Select):
                items = [_item(node, catalog) for node in _from_items(scope)]
                found = _lookup(col, items)
                if found is not None and found.relation is not None:
                    return found.relation.schema.field(col.name).type
            scope = scope.parent
        raise NoPush("a column of no relation")

    return typer
