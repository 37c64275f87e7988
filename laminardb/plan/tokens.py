"""The SQL tokenizer: statements split at `;`, names and keywords found, without sqlglot.

Comments, string literals (`'...'`, `$$...$$`) and quoted identifiers are handled, so a `;`
or a keyword inside them means nothing. Apart from `statements` so that the CLI can split a
script without importing sqlglot (0.3 s).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from laminardb.api.errors import QueryError, codes

WORD, QUOTED, STRING, NUMBER, PUNCT = "word", "quoted", "string", "number", "punct"


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        return self.kind == WORD and self.text.upper() in words

    def is_punct(self, char: str) -> bool:
        return self.kind == PUNCT and self.text == char

    @property
    def is_ident(self) -> bool:
        return self.kind in (WORD, QUOTED)

    @property
    def ident(self) -> str:
        """The identifier's value: quotes removed (doubled quotes undone), case kept."""
        if self.kind != QUOTED:
            return self.text
        quote = self.text[0]
        return self.text[1:-1].replace(quote * 2, quote)

    @property
    def normalized(self) -> str:
        """The identifier as SQL resolves it: lower-cased unless quoted."""
        return self.ident if self.kind == QUOTED else self.text.lower()


_WORD_RE = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_NUMBER_RE = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DOLLAR_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def parse_error(message: str) -> QueryError:
    return QueryError(
        f"SQL parse error ({codes.SQL_PARSE_ERROR}): {message}", code=codes.SQL_PARSE_ERROR
    )


def tokenize(sql: str) -> Iterator[Token]:
    """Tokens of `sql`, skipping whitespace and comments; raises QueryError on an open quote."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise parse_error("unterminated block comment")
            i = end + 2
        elif c in "'\"`":
            j = i + 1
            while True:
                j = sql.find(c, j)
                if j < 0:
                    what = "string literal" if c == "'" else "quoted identifier"
                    raise parse_error(f"unterminated {what} at offset {i}")
                if c != "`" and sql.startswith(c * 2, j):
                    j += 2
                    continue
                break
            yield Token(STRING if c == "'" else QUOTED, sql[i : j + 1], i, j + 1)
            i = j + 1
        elif c == "$" and (m := _DOLLAR_RE.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise parse_error(f"unterminated dollar-quoted string at offset {i}")
            end += len(m.group(0))
            yield Token(STRING, sql[i:end], i, end)
            i = end
        elif m := _WORD_RE.match(sql, i):
            yield Token(WORD, m.group(0), i, m.end())
            i = m.end()
        elif m := _NUMBER_RE.match(sql, i):
            yield Token(NUMBER, m.group(0), i, m.end())
            i = m.end()
        else:
            yield Token(PUNCT, c, i, i + 1)
            i += 1


def split_tokens(sql: str) -> list[list[Token]]:
    """Token lists of the non-empty statements, split at `;` outside strings and comments."""
    statements: list[list[Token]] = []
    current: list[Token] = []
    for token in tokenize(sql):
        if token.is_punct(";"):
            if current:
                statements.append(current)
            current = []
        else:
            current.append(token)
    if current:
        statements.append(current)
    return statements


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of `sql`, in order, each without its `;` and outer comments.

    Native `execute` runs each of them in turn and returns the last one's result (stopping at
    the first error, with the earlier statements' effects kept), so the coordinator does the
    same with these pieces.
    """
    return [sql[ts[0].start : ts[-1].end] for ts in split_tokens(sql)]
