"""Queries made of sub-queries: each sub-query is planned on its own, the rest in the merge.

Pure logic (SQL and catalog in, `CompoundPlan` out); `extended` executes the plans. A query
whose sub-queries (CTE bodies, derived tables, uncorrelated IN / EXISTS / scalar sub-queries,
and the branches of UNION / INTERSECT / EXCEPT) read the catalog, while the outer query reads
only those sub-queries, is answered as: every outermost sub-query ("piece") runs through the
distributed planner by itself (recursively: split, joins, or compound again), each answer is
loaded into a fresh native engine as a relation `__ldb_qN`, and the query, with each piece's
text replaced by `SELECT * FROM __ldb_qN`, runs there. A piece's answer is exactly the
single instance's answer to it (names and types included), so the outer query computes the
same rows; `extended` also checks the final schema against the native engine's answer over
empty relations. A correlated sub-query does not run by itself, so the plan is dropped and
the query gathered. Anything unusual raises `NoLocal` (the query is then gathered).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from laminardb.cluster.catalog import Catalog
from laminardb.plan.sqltext import NoLocal, depths, name_of, parse, tail, tokens
from laminardb.plan.tokens import Token

PIECE = "__ldb_q"
"""Prefix of the relations that hold the pieces' answers in the merge engine."""


@dataclass(frozen=True)
class Piece:
    """A sub-query of the statement (its text) and the relation holding its answer."""

    name: str
    sql: str


@dataclass(frozen=True)
class CompoundPlan:
    """Answer every piece, load each as relation `piece.name`, run `merge_sql` over them.
    `relations` are the catalog relations the whole query reads (for the schema probe)."""

    sql: str
    relations: tuple[str, ...]
    pieces: tuple[Piece, ...]
    merge_sql: str


def plan(sql: str, catalog: Catalog) -> CompoundPlan | None:
    """The compound plan of `sql`, or None when it has no sub-queries or its outer query
    reads a catalog relation itself."""
    try:
        return _plan(sql, catalog)
    except NoLocal:
        return None


def _plan(sql: str, catalog: Catalog) -> CompoundPlan:
    toks = tokens(sql)
    tree = parse(sql)
    if not isinstance(tree, exp.Query):
        raise NoLocal("not a query")
    if toks[0].is_word("WITH") and len(toks) > 1 and toks[1].is_word("RECURSIVE"):
        raise NoLocal("recursive CTE")
    spans = _subquery_spans(toks)
    if isinstance(tree, exp.Union | exp.Intersect | exp.Except):
        spans = _branch_spans(sql, toks, tree, spans)
    if not spans:
        raise NoLocal("no sub-queries")
    pieces: list[Piece] = []
    out: list[str] = []
    last = 0
    for i, (start, end) in enumerate(spans):
        piece = Piece(f"{PIECE}{i}", sql[start:end])
        pieces.append(piece)
        out += [sql[last:start], f"SELECT * FROM {piece.name}"]
        last = end
    out.append(sql[last:])
    merge_sql = "".join(out)
    ctes = _cte_names(tree)
    merged = parse(merge_sql)
    names = {p.name for p in pieces} | ctes
    for table in merged.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog") or not table.this:
            raise NoLocal("qualified relation")
        if name_of(table.this) not in names:
            raise NoLocal(f"the outer query reads {name_of(table.this)} itself")
    read: dict[str, None] = {}
    for piece in pieces:
        tree = parse(piece.sql)
        cut = tail(piece.sql, tokens(piece.sql), tree)
        if cut.order or cut.limit is not None or cut.offset is not None:
            # native answers some outer queries over a sorted, cut sub-query differently
            # (CORR over `(SELECT ... ORDER BY g LIMIT n)` gives no rows): keep them whole
            raise NoLocal("a sub-query sorts or cuts")
        if any(isinstance(n, exp.Window) for n in tree.walk()):
            # a window sub-query by itself can panic in native (0 rows) where the whole
            # query does not (conformance subquery:113): keep them whole
            raise NoLocal("a sub-query with a window function")
        for table in tree.find_all(exp.Table):
            name = name_of(table.this) if table.this else ""
            if name in ctes:
                raise NoLocal(f"a sub-query reads the CTE {name}")
            relation = catalog.get(name)
            if relation is None or relation.name != name:
                raise NoLocal(f"a sub-query reads {name}, not a relation of the catalog")
            read[name] = None
    return CompoundPlan(sql, tuple(read), tuple(pieces), merge_sql)


def _cte_names(tree: exp.Expr) -> set[str]:
    """The names the statement's CTEs (at any level) define."""
    names: set[str] = set()
    for cte in tree.find_all(exp.CTE):
        alias = cte.args.get("alias")
        if not isinstance(alias, exp.TableAlias) or alias.args.get("columns"):
            raise NoLocal("CTE with column names")
        names.add(name_of(alias.this))
    return names


def _subquery_spans(toks: list[Token]) -> list[tuple[int, int]]:
    """Text spans of the outermost parenthesized sub-queries: `( SELECT|WITH ... )`."""
    spans: list[tuple[int, int]] = []
    level = depths(toks)
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.is_punct("(") and i + 1 < len(toks) and toks[i + 1].is_word("SELECT", "WITH"):
            j = i + 1
            while j < len(toks) and not (toks[j].is_punct(")") and level[j] == level[i]):
                j += 1
            if j == len(toks):
                raise NoLocal("unbalanced parentheses")
            spans.append((toks[i + 1].start, toks[j - 1].end))
            i = j + 1
        else:
            i += 1
    return spans


def _branch_spans(
    sql: str, toks: list[Token], tree: exp.Expr, subqueries: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The branches of a top-level set operation (a parenthesized branch: its inside)."""
    core_end = len(tail(sql, toks, tree).core)
    level = depths(toks)
    body = [(t, d) for t, d in zip(toks, level, strict=True) if t.end <= core_end]
    branches: list[list[Token]] = [[]]
    skip = False
    for t, d in body:
        if d == 0 and t.is_word("UNION", "INTERSECT", "EXCEPT"):
            branches.append([])
            skip = True
            continue
        if skip and t.is_word("ALL", "DISTINCT"):
            skip = False
            continue
        skip = False
        branches[-1].append(t)
    spans: list[tuple[int, int]] = []
    for branch in branches:
        if not branch:
            raise NoLocal("empty branch")
        if branch[0].is_word("SELECT"):
            spans.append((branch[0].start, branch[-1].end))
            continue
        inner = (branch[1].start, branch[-2].end) if len(branch) > 2 else None
        if not (branch[0].is_punct("(") and branch[-1].is_punct(")")) or inner not in subqueries:
            raise NoLocal("unusual set-operation branch")
        spans.append(inner)
    if len(spans) != _count_branches(tree):
        raise NoLocal("branches do not line up with the parse")
    return spans


def _count_branches(node: exp.Expr) -> int:
    if isinstance(node, exp.Union | exp.Intersect | exp.Except):
        return _count_branches(node.this) + _count_branches(node.expression)
    return 1
