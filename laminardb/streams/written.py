"""The text a node of a stream's SELECT was written as, for the partial SQL the workers run.

sqlglot understands the stream; printing its tree back is not the same SQL to the engine
(`v ^ 3` is XOR to the engine and prints as `POWER(v, 3)`, `$$x$$` prints as `'x'`), so the
partial stream copies the user's own text of each expression it needs. A node's text is
found from the positions sqlglot keeps on names and literals, widened token by token to the
smallest bracket-balanced piece of the statement that sqlglot parses back to an equal node.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from laminardb.plan.statements import SQLGLOT_DIALECT
from laminardb.plan.tokens import Token, tokenize

_WIDEN = 12
"""Tokens tried on each side of the named part (a function's closing bracket, `IS NULL`,
`CASE ... END`, `CAST(x AS type)`); a node wider than that is printed by sqlglot."""


class Written:
    """One SELECT's text and tokens, asked for the text of its nodes."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        try:
            self.tokens: list[Token] = list(tokenize(sql))
        except Exception:  # an odd statement: every node is printed by sqlglot
            self.tokens = []

    def text(self, node: exp.Expr) -> str:
        """`node` as written in the statement, or sqlglot's printing of it when not found."""
        return self._find(node) or node.sql(dialect=SQLGLOT_DIALECT)

    def _find(self, node: exp.Expr) -> str | None:
        places = [n.meta for n in node.walk() if "start" in n.meta and "end" in n.meta]
        if not places or not self.tokens:
            return None
        first = self._token_at(min(p["start"] for p in places))
        last = self._token_at(max(p["end"] for p in places))
        if first is None or last is None:
            return None
        for widen in range(2 * _WIDEN + 1):
            for left in range(min(widen, first) + 1):
                right = widen - left
                if right > _WIDEN or left > _WIDEN or last + right >= len(self.tokens):
                    continue
                found = self._piece(first - left, last + right, node)
                if found is not None:
                    return found
        return None

    def _token_at(self, offset: int) -> int | None:
        for i, token in enumerate(self.tokens):
            if token.start <= offset < token.end:
                return i
        return None

    def _piece(self, i: int, j: int, node: exp.Expr) -> str | None:
        depth = 0
        for token in self.tokens[i : j + 1]:
            depth += token.is_punct("(") - token.is_punct(")")
            if depth < 0:
                return None
        if depth:
            return None
        text = self.sql[self.tokens[i].start : self.tokens[j].end]
        try:
            parsed = sqlglot.parse_one(text, read=SQLGLOT_DIALECT)
        except sqlglot.errors.SqlglotError:
            return None
        return text if parsed == node else None
