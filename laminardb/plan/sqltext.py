"""The text of a SQL statement for the planner's rules: tokens, nesting, the top-level tail.

Pure helpers shared by `joins` and `compound`. Like `split`, those rules copy the user's text
into new SQL rather than printing sqlglot's tree (printing changes DataFusion semantics), so
they need the text positions of clauses; sqlglot's parse is used to check that the clauses
found in the text are the ones it sees. Anything unusual raises `NoLocal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from laminardb.plan.statements import SQLGLOT_DIALECT
from laminardb.plan.tokens import Token, tokenize


class NoLocal(Exception):
    """The query is not shard-local by these rules (the message says why)."""


@dataclass(frozen=True)
class Tail:
    """The top-level ORDER BY / LIMIT / OFFSET of a statement: `core` is the text before
    them, `order` the ORDER BY items' token lists, `limit`/`offset` their integer values."""

    core: str
    order: list[list[Token]]
    limit: int | None
    offset: int | None


def tokens(sql: str) -> list[Token]:
    """The statement's tokens; NoLocal for anything but one statement without backquotes."""
    if "`" in sql:
        raise NoLocal("backquoted identifiers")
    try:
        toks = list(tokenize(sql))
    except Exception as exc:
        raise NoLocal("tokenizer") from exc
    if not toks or any(t.is_punct(";") for t in toks):
        raise NoLocal("not one statement")
    return toks


def parse(sql: str) -> exp.Expr:
    """sqlglot's parse of `sql` (NoLocal when it cannot)."""
    try:
        return sqlglot.parse_one(sql, read=SQLGLOT_DIALECT)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as exc:
        raise NoLocal("sqlglot cannot parse it") from exc


def depths(toks: list[Token]) -> list[int]:
    """The bracket nesting depth of every token (an opening bracket is at the outer depth)."""
    out: list[int] = []
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text in ")]}":
            depth -= 1
        out.append(depth)
        if t.kind == "punct" and t.text in "([{":
            depth += 1
    return out


def split_items(toks: list[Token]) -> list[list[Token]]:
    """Comma-separated items at depth 0 of a token list."""
    items: list[list[Token]] = [[]]
    for t, d in zip(toks, depths(toks), strict=True):
        if d == 0 and t.is_punct(","):
            items.append([])
        else:
            items[-1].append(t)
    if any(not i for i in items):
        raise NoLocal("empty list item")
    return items


def tail(sql: str, toks: list[Token], tree: exp.Expr) -> Tail:
    """Cut the top-level ORDER BY / LIMIT / OFFSET off `sql`, checked against the parse."""
    marks: dict[str, int] = {}
    for i, (t, d) in enumerate(zip(toks, depths(toks), strict=True)):
        if d != 0 or t.kind != "word":
            continue
        word = t.text.upper()
        if word in ("UNION", "INTERSECT", "EXCEPT"):
            marks.clear()
        elif word in ("FETCH", "QUALIFY", "WINDOW"):
            raise NoLocal(f"{word} at the top level")
        elif word == "ORDER" and i + 1 < len(toks) and toks[i + 1].is_word("BY"):
            if "ORDER" in marks or "LIMIT" in marks or "OFFSET" in marks:
                raise NoLocal("unusual clause order")
            marks["ORDER"] = i
        elif word in ("LIMIT", "OFFSET"):
            if word in marks:
                raise NoLocal(f"{word} twice")
            marks[word] = i
    present = {w for w in ("ORDER", "LIMIT", "OFFSET") if tree.args.get(w.lower())}
    if present != set(marks):
        raise NoLocal("ORDER BY / LIMIT / OFFSET do not line up with the parse")
    if "LIMIT" in marks and "OFFSET" in marks and marks["OFFSET"] < marks["LIMIT"]:
        raise NoLocal("OFFSET before LIMIT")
    first = min(marks.values(), default=len(toks))
    core = sql[: toks[first - 1].end] if first else ""
    order: list[list[Token]] = []
    if "ORDER" in marks:
        stop = min((v for k, v in marks.items() if k != "ORDER"), default=len(toks))
        order = split_items(toks[marks["ORDER"] + 2 : stop])
    return Tail(
        core, order, _integer(toks, marks.get("LIMIT")), _integer(toks, marks.get("OFFSET"))
    )


def _integer(toks: list[Token], at: int | None) -> int | None:
    """The integer literal after LIMIT / OFFSET (and nothing else up to the next clause)."""
    if at is None:
        return None
    rest = toks[at + 1 : at + 3]
    if not rest or rest[0].kind != "number" or not rest[0].text.isdigit():
        raise NoLocal("LIMIT / OFFSET is not an integer literal")
    if len(rest) > 1 and not rest[1].is_word("OFFSET", "LIMIT"):
        raise NoLocal("LIMIT / OFFSET expression")
    return int(rest[0].text)


def limits(limit: int | None, offset: int | None) -> str:
    """` LIMIT n OFFSET m`, each part only when given."""
    return (f" LIMIT {limit}" if limit is not None else "") + (
        f" OFFSET {offset}" if offset is not None else ""
    )


def name_of(ident: object) -> str:
    """An identifier's name exactly as written (native folds no case)."""
    if not isinstance(ident, exp.Identifier):
        raise NoLocal("not an identifier")
    return str(ident.this)


def conjuncts(node: exp.Expr) -> list[exp.Expr]:
    """The ANDed parts of a condition (parentheses removed)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]
