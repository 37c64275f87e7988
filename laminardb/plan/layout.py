"""The shape of a single-relation SELECT, for the planner: clauses, items and their text.

`split` rewrites queries by copying the user's expressions into new SQL as written: sqlglot
is used to understand a query, never to print it, because printing changes DataFusion
semantics (`^` becomes POWER, `round(x, 5)` gains a DECIMAL cast, `signum` becomes `sign`).
So this module finds, for the top-level SELECT, the text span of every clause, select item
(alias removed), GROUP BY, HAVING and ORDER BY item with the statement tokenizer, checks
that they line up one to one with sqlglot's parse, and resolves names the way the native
engine does. Anything unusual raises `NoPlan` (the query is then gathered, never guessed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation, quote
from laminardb.plan.statements import SQLGLOT_DIALECT
from laminardb.plan.tokens import tokenize


class NoPlan(Exception):
    """No rule of the planner applies (the message says why)."""


Span = tuple[int, int]
"""Start and end offsets of a piece of the statement text."""

TokenKey = tuple[tuple[str, str], ...]
"""An expression as its tokens: column references as ("col", name), words upper-cased."""


@dataclass(frozen=True)
class Tok:
    """A token of the statement (from the statements tokenizer)."""

    kind: str
    text: str
    start: int
    end: int

    def word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words

    def punct(self, chars: str) -> bool:
        return self.kind == "punct" and self.text in chars


@dataclass(frozen=True)
class Item:
    """One select item: expression node and span (alias removed), whole text, output name."""

    node: exp.Expr
    span: Span
    full_text: str
    alias: str | None
    output: str | None


@dataclass(frozen=True)
class Order:
    """One ORDER BY item: expression node and span (direction removed), and the direction."""

    node: exp.Expr
    span: Span
    desc: bool
    nulls_first: bool

    @property
    def direction(self) -> str:
        """Explicit direction and NULL placement (the defaults spelled out for the merge)."""
        nulls = " NULLS FIRST" if self.nulls_first else " NULLS LAST"
        return ("DESC" if self.desc else "ASC") + nulls


@dataclass
class Query:
    """The analysed top-level SELECT of a single-relation query.

    `body` is the text from FROM up to ORDER BY / LIMIT / OFFSET, `from_where` the text
    from FROM through WHERE; `order_text` the ORDER BY items as written. `columns` are the
    relation's column names, `column_spans` maps the start of every column reference to
    (its end, the column name), and `index` maps a token's start offset to its position.
    """

    sql: str
    tree: exp.Select
    relation: Relation
    toks: list[Tok]
    body: str
    from_where: str
    limit: int | None
    offset: int | None
    items: list[Item] = field(default_factory=list)
    group: list[tuple[exp.Expr, Span]] = field(default_factory=list)
    having: tuple[exp.Expr, Span] | None = None
    order: list[Order] = field(default_factory=list)
    order_text: str = ""
    columns: frozenset[str] = frozenset()
    column_spans: dict[int, tuple[int, str]] = field(default_factory=dict)
    index: dict[int, int] = field(default_factory=dict)
    distinct: bool = False

    def text(self, span: Span) -> str:
        return self.sql[span[0] : span[1]]


NEVER_SPLIT: tuple[type[exp.Expr], ...] = (
    exp.Subquery,
    exp.Exists,
    exp.Lateral,
    exp.Unnest,
    exp.Values,
    exp.Pivot,
    exp.Qualify,
    exp.Cube,
    exp.Rollup,
    exp.GroupingSets,
    exp.Placeholder,
    exp.Parameter,
    exp.Intersect,
    exp.Except,
)
"""Constructs no planner rule splits (each rule refuses these and adds its own)."""

_UNSUPPORTED_NODES: tuple[type[exp.Expr], ...] = (
    *NEVER_SPLIT,
    exp.Join,
    exp.Window,
    exp.With,
    exp.Union,
    exp.TableSample,
    exp.WithinGroup,
)

_CLAUSES = ("FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET")


def _parse(sql: str) -> exp.Select:
    """sqlglot's parse of a plain SELECT without the constructs this slice does not split."""
    if "`" in sql:
        raise NoPlan("backquoted identifiers")
    try:
        tree = sqlglot.parse_one(sql, read=SQLGLOT_DIALECT)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as exc:
        raise NoPlan("sqlglot cannot parse it") from exc
    if not isinstance(tree, exp.Select):
        raise NoPlan("not a plain SELECT")
    for node in tree.walk():
        if isinstance(node, exp.WithinGroup) and isinstance(node.this, exp.PercentileCont):
            continue  # the two-phase rule ranks it (twophase._percentile_within)
        if isinstance(node, _UNSUPPORTED_NODES):
            raise NoPlan(f"{type(node).__name__} is not split yet")
        if isinstance(node, exp.Select) and node is not tree:
            raise NoPlan("nested SELECT")
    distinct = tree.args.get("distinct")
    if isinstance(distinct, exp.Distinct) and (distinct.args.get("on") or distinct.expressions):
        raise NoPlan("DISTINCT ON")
    for arg in ("joins", "laterals", "windows", "qualify", "into", "kind", "hint"):
        if tree.args.get(arg):
            raise NoPlan(f"{arg} is not split yet")
    if tree.args.get("operation_modifiers") or tree.args.get("exclude"):
        raise NoPlan("select modifiers")
    return tree


def _relation(tree: exp.Select, catalog: Catalog) -> Relation:
    """The one catalog relation the query reads (names are matched exactly, as native does)."""
    from_ = tree.args.get("from_") or tree.args.get("from")
    tables = list(tree.find_all(exp.Table))
    if not isinstance(from_, exp.From) or len(tables) != 1 or from_.this is not tables[0]:
        raise NoPlan("not exactly one relation")
    table = tables[0]
    if table.args.get("db") or table.args.get("catalog"):
        raise NoPlan("qualified relation name")
    name = name_of(table.this)
    relation = catalog.get(name)
    if relation is None or relation.name != name:
        raise NoPlan(f"{name} is not a relation of the catalog")
    return relation


def analyse(sql: str, catalog: Catalog) -> Query:
    """The parts of `sql`, a SELECT over one relation of `catalog`; NoPlan when it is
    another shape, or when the tokenizer and sqlglot disagree about its clauses."""
    tree = _parse(sql)
    relation = _relation(tree, catalog)
    try:
        toks = [Tok(t.kind, t.text, t.start, t.end) for t in tokenize(sql)]
    except Exception as exc:
        raise NoPlan("tokenizer") from exc
    if not toks or not toks[0].word("SELECT") or any(t.punct(";") for t in toks):
        raise NoPlan("not one statement starting with SELECT")
    marks = _clause_marks(toks)
    _check_marks(tree, marks)
    stops = sorted(marks.values())

    def clause(word: str, skip: int) -> list[Tok]:
        start = marks[word]
        stop = min((i for i in stops if i > start), default=len(toks))
        return toks[start + skip : stop]

    def upto(*words: str) -> str:
        stop = min((marks[w] for w in words if w in marks), default=len(toks))
        return sql[toks[marks["FROM"]].start : toks[stop - 1].end]

    select_toks = toks[1 : marks["FROM"]]
    if select_toks and select_toks[0].word("ALL"):
        select_toks = select_toks[1:]
    distinct = bool(select_toks) and select_toks[0].word("DISTINCT")
    if distinct != bool(tree.args.get("distinct")):
        raise NoPlan("DISTINCT does not line up with the parse")
    if distinct:
        select_toks = select_toks[1:]
    query = Query(
        sql=sql,
        tree=tree,
        relation=relation,
        toks=toks,
        body=upto("ORDER", "LIMIT", "OFFSET"),
        from_where=upto("GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET"),
        limit=_integer(tree.args.get("limit")),
        offset=_integer(tree.args.get("offset")),
        columns=frozenset(relation.schema.names),
        index={t.start: i for i, t in enumerate(toks)},
        distinct=distinct,
    )
    query.column_spans = _column_spans(tree)
    query.items = _items(query, tree.expressions, _split(select_toks))
    group = tree.args.get("group")
    if isinstance(group, exp.Group):
        if any(group.args.get(a) for a in ("grouping_sets", "cube", "rollup", "all", "totals")):
            raise NoPlan("grouping sets")
        parts = _split(clause("GROUP", 2))
        if len(parts) != len(group.expressions):
            raise NoPlan("GROUP BY items do not line up")
        query.group = [(n, _span(p)) for n, p in zip(group.expressions, parts, strict=True)]
    having = tree.args.get("having")
    if isinstance(having, exp.Having):
        query.having = (having.this, _span(clause("HAVING", 1)))
    order = tree.args.get("order")
    if isinstance(order, exp.Order):
        order_toks = clause("ORDER", 2)
        query.order_text = query.text(_span(order_toks))
        query.order = _orders(order.expressions, _split(order_toks))
    return query


def _clause_marks(toks: list[Tok]) -> dict[str, int]:
    """Token index of each top-level clause keyword (nesting by (), [] and {})."""
    marks: dict[str, int] = {}
    depth = 0
    for i, tok in enumerate(toks):
        if tok.punct("([{"):
            depth += 1
        elif tok.punct(")]}"):
            depth -= 1
        elif depth == 0 and tok.kind == "word" and i > 0:
            word = tok.text.upper()
            if word == "FROM" and toks[i - 1].word("DISTINCT"):
                continue
            if word == "GROUP" and toks[i - 1].word("WITHIN"):
                continue
            if word in ("GROUP", "ORDER") and not (i + 1 < len(toks) and toks[i + 1].word("BY")):
                raise NoPlan(f"{word} without BY")
            if word in _CLAUSES:
                if word in marks:
                    raise NoPlan(f"{word} twice at the top level")
                marks[word] = i
            elif word in ("UNION", "INTERSECT", "EXCEPT", "QUALIFY", "WINDOW", "FETCH", "JOIN"):
                raise NoPlan(f"{word} at the top level")
    return marks


def _check_marks(tree: exp.Select, marks: dict[str, int]) -> None:
    """The tokenizer's clauses must be exactly the parse's, in the usual order."""
    present = {
        "FROM": tree.args.get("from_") or tree.args.get("from"),
        "WHERE": tree.args.get("where"),
        "GROUP": tree.args.get("group"),
        "HAVING": tree.args.get("having"),
        "ORDER": tree.args.get("order"),
        "LIMIT": tree.args.get("limit"),
        "OFFSET": tree.args.get("offset"),
    }
    if {w for w, v in present.items() if v} != set(marks) or "FROM" not in marks:
        raise NoPlan("clauses do not line up with the parse")
    body = [marks[w] for w in ("FROM", "WHERE", "GROUP", "HAVING", "ORDER") if w in marks]
    if body != sorted(body) or any(marks[w] < body[-1] for w in ("LIMIT", "OFFSET") if w in marks):
        raise NoPlan("unusual clause order")


def _split(toks: list[Tok]) -> list[list[Tok]]:
    """Comma-separated items at nesting depth 0."""
    items: list[list[Tok]] = [[]]
    depth = 0
    for tok in toks:
        if tok.punct("([{"):
            depth += 1
        elif tok.punct(")]}"):
            depth -= 1
        if depth == 0 and tok.punct(","):
            items.append([])
        else:
            items[-1].append(tok)
    if any(not item for item in items):
        raise NoPlan("empty list item")
    return items


def _span(toks: Sequence[Tok]) -> Span:
    """From the first token's start to the last one's end."""
    if not toks:
        raise NoPlan("empty clause")
    return toks[0].start, toks[-1].end


def _integer(node: object) -> int | None:
    """The value of LIMIT n / OFFSET n (None when absent); only integer literals split."""
    if node is None:
        return None
    if not isinstance(node, exp.Limit | exp.Offset) or node.args.get("offset"):
        raise NoPlan("unusual LIMIT / OFFSET")
    value = node.args.get("expression")
    if isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit():
        return int(str(value.this))
    raise NoPlan("LIMIT / OFFSET is not an integer literal")


def select_position(node: exp.Expr, count: int) -> int | None:
    """The 0-based select position an integer literal names (GROUP BY 1, ORDER BY 2)."""
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    text = str(node.this)
    if not text.isdigit() or not 1 <= int(text) <= count:
        raise NoPlan("position out of range")
    return int(text) - 1


def name_of(ident: object) -> str:
    """An identifier's name exactly as written: native folds no case, quoted or not."""
    if not isinstance(ident, exp.Identifier):
        raise NoPlan("not an identifier")
    return str(ident.this)


def _column_span(col: exp.Column) -> Span:
    """A column reference's span, from its identifiers' positions (qualifier included)."""
    parts = [p for p in (col.args.get("table"), col.this) if p is not None]
    metas = [p.meta for p in parts if isinstance(p, exp.Identifier)]
    if len(metas) != len(parts) or not all("start" in m for m in metas):
        raise NoPlan("column without position")
    return min(int(m["start"]) for m in metas), max(int(m["end"]) for m in metas) + 1


def _column_spans(tree: exp.Select) -> dict[int, tuple[int, str]]:
    """Span of every column reference of the query: start -> (end, column name)."""
    spans: dict[int, tuple[int, str]] = {}
    for col in tree.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            continue
        if col.args.get("db") or col.args.get("catalog"):
            raise NoPlan("column with a schema")
        start, end = _column_span(col)
        spans[start] = (end, name_of(col.this))
    return spans


def _items(query: Query, nodes: list[exp.Expr], parts: list[list[Tok]]) -> list[Item]:
    """Select items, with `*` and `t.*` expanded to the relation's columns."""
    if len(nodes) != len(parts):
        raise NoPlan("select items do not line up")
    items: list[Item] = []
    for node, toks in zip(nodes, parts, strict=True):
        full = query.text(_span(toks))
        star = node if isinstance(node, exp.Star) else None
        if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
            star = node.this
        if star is not None:
            if any(star.args.get(a) for a in ("except", "replace", "rename", "exclude")):
                raise NoPlan("star modifiers")
            for c in query.relation.schema.names:
                items.append(Item(exp.column(c, quoted=True), (0, 0), quote(c), None, c))
            continue
        if isinstance(node, exp.Alias):
            alias = node.args.get("alias")
            meta = alias.meta if isinstance(alias, exp.Identifier) else {}
            if toks[-1].start != meta.get("start"):
                raise NoPlan("alias position")
            body = toks[:-1]
            if body and body[-1].word("AS"):
                body = body[:-1]
            name = name_of(alias)
            items.append(Item(node.this, _span(body), full, name, name))
            continue
        output = name_of(node.this) if isinstance(node, exp.Column) else None
        items.append(Item(node, _span(toks), full, None, output))
    return items


def _orders(nodes: list[exp.Expr], parts: list[list[Tok]]) -> list[Order]:
    """ORDER BY items: the expression's span without ASC/DESC and NULLS FIRST/LAST."""
    if len(nodes) != len(parts):
        raise NoPlan("ORDER BY items do not line up")
    orders: list[Order] = []
    for node, toks in zip(nodes, parts, strict=True):
        if not isinstance(node, exp.Ordered) or node.args.get("with_fill"):
            raise NoPlan("unusual ORDER BY item")
        body = list(toks)
        if len(body) > 2 and body[-2].word("NULLS") and body[-1].word("FIRST", "LAST"):
            body = body[:-2]
        if body and body[-1].word("ASC", "DESC"):
            body = body[:-1]
        desc, nulls_first = bool(node.args.get("desc")), bool(node.args.get("nulls_first"))
        orders.append(Order(node.this, _span(body), desc, nulls_first))
    return orders


# ---------------------------------------------------------------------------- name resolution


def _is_bare(node: exp.Expr) -> bool:
    """A column named without a relation qualifier."""
    return (
        isinstance(node, exp.Column)
        and not node.args.get("table")
        and not isinstance(node.this, exp.Star)
    )


def aliases_of(query: Query) -> dict[str, list[int]]:
    """Select item positions by alias."""
    out: dict[str, list[int]] = {}
    for i, item in enumerate(query.items):
        if item.alias is not None:
            out.setdefault(item.alias, []).append(i)
    return out


def shadowing(query: Query, name: str) -> bool:
    """Whether `name` is the alias of a select item other than the input column `name`
    (native resolves such a name differently by clause, so those queries are not split)."""
    return any(
        not (
            isinstance(query.items[i].node, exp.Column)
            and name_of(query.items[i].node.this) == name
        )
        for i in aliases_of(query).get(name, [])
    )


def columns_in(node: exp.Expr) -> list[exp.Column]:
    """Every column reference in `node` (itself included)."""
    return [
        c for c in node.walk() if isinstance(c, exp.Column) and not isinstance(c.this, exp.Star)
    ]


def _no_alias_references(query: Query, node: exp.Expr) -> None:
    """Refuse an expression naming a select alias (see `shadowing`)."""
    for col in columns_in(node):
        if not col.args.get("table") and shadowing(query, name_of(col.this)):
            raise NoPlan(f"{name_of(col.this)} names a select alias")


def order_target(query: Query, order: Order) -> int | None:
    """The select item an ORDER BY item names (by position or output name), else None."""
    position = select_position(order.node, len(query.items))
    if position is not None:
        return position
    if _is_bare(order.node):
        name = name_of(order.node.this)
        found = [i for i, item in enumerate(query.items) if item.output == name]
        if len(found) > 1:
            raise NoPlan(f"ORDER BY {name} is ambiguous")
        if found:
            return found[0]
    _no_alias_references(query, order.node)
    return None


def group_keys(query: Query) -> list[tuple[exp.Expr, Span, str]]:
    """GROUP BY items resolved to input expressions: (node, span, text for the workers)."""
    keys: list[tuple[exp.Expr, Span, str]] = []
    aliases = aliases_of(query)
    for node, span in query.group:
        position = select_position(node, len(query.items))
        if position is None and _is_bare(node) and name_of(node.this) not in query.columns:
            found = aliases.get(name_of(node.this), [])
            if len(found) != 1:
                raise NoPlan("GROUP BY names no single column or alias")
            position = found[0]
        if position is not None:
            item = query.items[position]
            text = item.full_text if item.span == (0, 0) else query.text(item.span)
            keys.append((item.node, item.span, text))
            continue
        _no_alias_references(query, node)
        keys.append((node, span, query.text(span)))
    for node, _, _ in keys:
        if any(isinstance(n, exp.AggFunc) for n in node.walk()):
            raise NoPlan("aggregate in GROUP BY")
        if any(name_of(c.this) not in query.columns for c in columns_in(node)):
            raise NoPlan("GROUP BY names something that is not a column")
    return keys


def groups_by_key(query: Query) -> bool:
    """Whether every group lives on one worker: GROUP BY names each partition-key column."""
    relation = query.relation
    if relation.home is not None or not relation.partition_by or not query.group:
        return False
    named = {name_of(n.this) for n, _, _ in group_keys(query) if isinstance(n, exp.Column)}
    return set(relation.partition_by) <= named


def token_key(query: Query, span: Span) -> TokenKey:
    """The tokens of a span, with each column reference as its column name (so `t.k`, `k`
    and `"k"` compare equal) and words upper-cased."""
    out: list[tuple[str, str]] = []
    skip_to = -1
    for tok in query.toks:
        if tok.start < span[0] or tok.end > span[1] or tok.start < skip_to:
            continue
        if tok.start in query.column_spans:
            skip_to, name = query.column_spans[tok.start]
            out.append(("col", name))
        else:
            out.append((tok.kind, tok.text.upper() if tok.kind == "word" else tok.text))
    return tuple(out)


def _call_span(query: Query, node: exp.Expr) -> Span | None:
    """Span of a function call `name(...)` starting at the node's name token, else None."""
    start = node.meta.get("start") if isinstance(node, exp.Func) else None
    i = query.index.get(start) if isinstance(start, int) else None
    if i is None or i + 1 >= len(query.toks) or not query.toks[i + 1].punct("("):
        return None
    depth = 0
    for tok in query.toks[i + 1 :]:
        if tok.punct("([{"):
            depth += 1
        elif tok.punct(")]}"):
            depth -= 1
            if depth == 0:
                return query.toks[i].start, tok.end
    return None


def suffix_span(query: Query, call: Span, *words: str) -> Span | None:
    """Span of `<call> WORD ... (...)`: the call at `call`, then `words` (say `FILTER`, or
    `WITHIN GROUP`) and a parenthesised group; None when the text goes on otherwise."""
    after = [t for t in query.toks if t.start >= call[1]]
    n = len(words)
    if len(after) < n + 2 or not after[n].punct("("):
        return None
    if not all(after[i].word(word) for i, word in enumerate(words)):
        return None
    depth = 0
    for tok in after[n:]:
        if tok.punct("([{"):
            depth += 1
        elif tok.punct(")]}"):
            depth -= 1
            if depth == 0:
                return call[0], tok.end
    return None


def _within_group_span(query: Query, node: exp.WithinGroup) -> Span | None:
    """Span of `name(...) WITHIN GROUP (...)`, else None."""
    call = _call_span(query, node.this) if isinstance(node.this, exp.Expr) else None
    return None if call is None else suffix_span(query, call, "WITHIN", "GROUP")


def node_span(query: Query, node: exp.Expr) -> Span | None:
    """The span of a node that can be replaced as a whole in the text: a column reference,
    a function call `name(...)` or `name(...) WITHIN GROUP (...)`; None for anything else."""
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return _column_span(node)
    if isinstance(node, exp.WithinGroup):
        return _within_group_span(query, node)
    return _call_span(query, node)
