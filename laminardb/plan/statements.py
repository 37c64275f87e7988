"""Classify one SQL statement for the coordinator, without parsing LaminarDB's streaming DDL.

sqlglot cannot parse `CREATE SOURCE`, `WATERMARK FOR`, `EMIT ON WINDOW CLOSE` and friends, so
statements are recognised here from the tokens of `tokens` (comments, string literals and
quoted identifiers are handled, so a `;` or `PARTITION BY` inside them means nothing). Only
SELECTs are handed to sqlglot, by `referenced_tables`.

The `PARTITION BY (k[, k2])` clause of `CREATE SOURCE` / `CREATE TABLE` is ours (DESIGN.md
decision 3): it is parsed, checked against the column list and removed from the text that the
engines receive.

Native facts matched here (laminardb 0.17.0): `execute("a; b")` runs every statement in order
and returns the last result (`tokens.split_statements` gives the pieces); empty text is
`QueryError: Query failed (400): Empty SQL statement`; block comments do not nest; strings have
no backslash escapes; `$$...$$` strings and backquoted identifiers exist. Native keeps the
object name as written (`ddl_object` of `CREATE SOURCE "My Src"` is `"My Src"`), which is
`Statement.raw_name`, and column names as written without quotes (`X` stays `X`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from laminardb.api.errors import QueryError, SchemaError, codes
from laminardb.plan.tokens import QUOTED, WORD, Token, parse_error, split_tokens, tokenize

SQLGLOT_DIALECT = "postgres"
"""The sqlglot dialect that parses the most of the conformance corpus (DataFusion SQL)."""

FIRST_QUERY_MODULES = (f"sqlglot.dialects.{SQLGLOT_DIALECT}", "pyarrow.acero")
"""What the first planned query imports: the dialect (sqlglot loads it on first use) and
Arrow's grouping engine (`Table.group_by`, used by the in-process merges)."""


def import_first_query_modules() -> None:
    """Import `FIRST_QUERY_MODULES`, about 35 ms that the first query would otherwise pay
    (run while the workers start). One that fails is skipped: the query that needs it
    raises the error."""
    for name in FIRST_QUERY_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


class StatementKind(enum.Enum):
    """What a statement does, as far as routing it is concerned."""

    QUERY = "query"
    CREATE_SOURCE = "create_source"
    CREATE_TABLE = "create_table"
    CREATE_STREAM = "create_stream"
    CREATE_MATERIALIZED_VIEW = "create_materialized_view"
    CREATE_VIEW = "create_view"
    CREATE_SINK = "create_sink"
    DROP = "drop"
    ALTER = "alter"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    SHOW = "show"
    DESCRIBE = "describe"
    EXPLAIN = "explain"
    COPY = "copy"
    OTHER = "other"


class ObjectKind(enum.Enum):
    """The catalog object a CREATE, DROP or ALTER names (values are the native spelling)."""

    SOURCE = "SOURCE"
    TABLE = "TABLE"
    STREAM = "STREAM"
    SINK = "SINK"
    MATERIALIZED_VIEW = "MATERIALIZED VIEW"
    VIEW = "VIEW"


@dataclass(frozen=True)
class Statement:
    """One classified statement.

    `name` is the object created, dropped, altered, described, inserted into, updated or
    deleted from: the last part of a dotted name, lower-cased unless quoted (quotes removed).
    `raw_name` is the same name exactly as written, which is what native reports as
    `ddl_object` and lists in `sources()`. `sql` is the statement to send to the engines:
    comments around it and the trailing `;` dropped, and for CREATE SOURCE / CREATE TABLE the
    `PARTITION BY` clause removed. `partition_by` holds the key columns spelled as in the
    column list. `object_kind` is the object type of CREATE/DROP/ALTER; `drop_kind` is the same
    for DROP only. `query` is the SELECT of CREATE STREAM / MATERIALIZED VIEW / VIEW without
    its `EMIT ...` clause, which is `emit`.
    """

    kind: StatementKind
    sql: str
    name: str | None = None
    raw_name: str | None = None
    partition_by: tuple[str, ...] = ()
    if_not_exists: bool = False
    or_replace: bool = False
    if_exists: bool = False
    drop_kind: ObjectKind | None = None
    object_kind: ObjectKind | None = None
    cascade: bool = False
    query: str | None = None
    emit: str | None = None


# ---------------------------------------------------------------------------- classification


class _Cursor:
    """A read position over one statement's tokens."""

    def __init__(self, sql: str, tokens: Sequence[Token]) -> None:
        self.sql = sql
        self.tokens = tokens
        self.pos = 0

    def peek(self, ahead: int = 0) -> Token | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def accept(self, *words: str) -> bool:
        """Consume the keyword sequence `words` if it comes next."""
        for k, word in enumerate(words):
            token = self.peek(k)
            if token is None or not token.is_word(word):
                return False
        self.pos += len(words)
        return True

    def name(self) -> tuple[str | None, str | None]:
        """Consume a possibly dotted name: (normalized last part, text as written)."""
        first = self.peek()
        if first is None or not first.is_ident:
            return None, None
        last = first
        self.pos += 1
        while (dot := self.peek()) is not None and dot.is_punct("."):
            part = self.peek(1)
            if part is None or not part.is_ident:
                break
            last = part
            self.pos += 2
        return last.normalized, self.sql[first.start : last.end]


def _object_kind(cur: _Cursor) -> ObjectKind | None:
    for words, kind in (
        (("MATERIALIZED", "VIEW"), ObjectKind.MATERIALIZED_VIEW),
        (("SOURCE",), ObjectKind.SOURCE),
        (("TABLE",), ObjectKind.TABLE),
        (("STREAM",), ObjectKind.STREAM),
        (("SINK",), ObjectKind.SINK),
        (("VIEW",), ObjectKind.VIEW),
    ):
        if cur.accept(*words):
            return kind
    return None


_CLASSIFIED: dict[str, Statement] = {}
"""Recent classifications of short statements (a dashboard repeats its queries; tokenising
costs ~0.1-0.2 ms). Cleared when full; errors are not cached."""


def classify(sql: str) -> Statement:
    """Classify the single statement in `sql` (see `_classify`), from `_CLASSIFIED` when the
    same text was classified before."""
    found = _CLASSIFIED.get(sql)
    if found is None:
        found = _classify(sql)
        if len(sql) <= 4096:
            if len(_CLASSIFIED) >= 1024:
                _CLASSIFIED.clear()
            _CLASSIFIED[sql] = found
    return found


def _classify(sql: str) -> Statement:
    """Classify the single statement in `sql`.

    Raises QueryError 400 for empty text (as native does), QueryError 401 for more than one
    statement (use `tokens.split_statements` first) or a malformed PARTITION BY, and SchemaError when
    a PARTITION BY column is not in the column list.
    """
    statements = split_tokens(sql)
    if not statements:
        raise QueryError(
            f"Query failed ({codes.QUERY_FAILED}): Empty SQL statement", code=codes.QUERY_FAILED
        )
    if len(statements) > 1:
        raise parse_error(
            f"expected one SQL statement, got {len(statements)} (split them with split_statements)"
        )
    tokens = statements[0]
    text = sql[tokens[0].start : tokens[-1].end]
    cur = _Cursor(sql, tokens)
    first = tokens[0]
    if first.is_punct("(") or first.is_word("SELECT", "WITH", "VALUES"):
        return Statement(StatementKind.QUERY, text)
    if first.is_word("COPY"):  # files in and out: laminardb/files/copy.py parses the rest
        return Statement(StatementKind.COPY, text)
    if first.is_word("SHOW", "EXPLAIN"):
        return Statement(StatementKind[first.text.upper()], text)
    if cur.accept("DESCRIBE") or cur.accept("DESC"):
        name, raw = cur.name()
        return Statement(StatementKind.DESCRIBE, text, name=name, raw_name=raw)
    if cur.accept("CREATE"):
        return _classify_create(sql, text, tokens, cur)
    if cur.accept("DROP") or cur.accept("ALTER"):
        is_drop = first.is_word("DROP")
        object_kind = _object_kind(cur)
        if_exists = cur.accept("IF", "EXISTS")
        name, raw = cur.name() if object_kind is not None else (None, None)
        return Statement(
            StatementKind.DROP if is_drop else StatementKind.ALTER,
            text,
            name=name,
            raw_name=raw,
            if_exists=if_exists,
            object_kind=object_kind,
            drop_kind=object_kind if is_drop else None,
            cascade=is_drop and tokens[-1].is_word("CASCADE"),
        )
    for words, kind in (
        (("INSERT", "INTO"), StatementKind.INSERT),
        (("INSERT", "OVERWRITE"), StatementKind.INSERT),
        (("INSERT",), StatementKind.INSERT),
        (("UPDATE",), StatementKind.UPDATE),
        (("DELETE", "FROM"), StatementKind.DELETE),
        (("DELETE",), StatementKind.DELETE),
    ):
        if cur.accept(*words):
            cur.accept("TABLE")
            name, raw = cur.name()
            return Statement(kind, text, name=name, raw_name=raw)
    return Statement(StatementKind.OTHER, text)


def _classify_create(sql: str, text: str, tokens: list[Token], cur: _Cursor) -> Statement:
    or_replace = cur.accept("OR", "REPLACE")
    object_kind = _object_kind(cur)
    if object_kind is None:
        return Statement(StatementKind.OTHER, text, or_replace=or_replace)
    if_not_exists = cur.accept("IF", "NOT", "EXISTS")
    name, raw = cur.name()
    statement = Statement(
        StatementKind["CREATE_" + object_kind.name],
        text,
        name=name,
        raw_name=raw,
        or_replace=or_replace,
        if_not_exists=if_not_exists,
        object_kind=object_kind,
    )
    rest = tokens[cur.pos :]
    if object_kind in (ObjectKind.STREAM, ObjectKind.MATERIALIZED_VIEW, ObjectKind.VIEW):
        query, emit = _as_query(sql, rest)
        return dataclasses.replace(statement, query=query, emit=emit)
    if object_kind in (ObjectKind.SOURCE, ObjectKind.TABLE):
        return _partitioned(sql, tokens, rest, statement)
    return statement


def _as_query(sql: str, rest: list[Token]) -> tuple[str | None, str | None]:
    """(SELECT text after the top-level AS without its EMIT clause, the EMIT clause)."""
    depth = 0
    start: int | None = None
    for i, token in enumerate(rest):
        depth += token.is_punct("(") - token.is_punct(")")
        if depth == 0 and start is None and token.is_word("AS") and i + 1 < len(rest):
            start = i + 1
        elif depth == 0 and start is not None and token.is_word("EMIT") and i > start:
            query = sql[rest[start].start : rest[i - 1].end]
            return query, sql[token.start : rest[-1].end]
    if start is None:
        return None, None
    return sql[rest[start].start : rest[-1].end], None


def _column_list(rest: Sequence[Token]) -> tuple[list[list[Token]], int] | None:
    """The column definitions (name token first, then its type) of a `( ... )` list opening
    `rest`, and the index after `)`."""
    if not rest or not rest[0].is_punct("("):
        return None
    names: list[list[Token]] = []
    item: list[Token] = []
    depth = 0
    for i, token in enumerate(rest):
        if token.is_punct("("):
            depth += 1
            if depth == 1:
                continue
        elif token.is_punct(")"):
            depth -= 1
            if depth == 0:
                _add_column(item, names)
                return names, i + 1
        if depth == 1 and token.is_punct(","):
            _add_column(item, names)
            item = []
        else:
            item.append(token)
    raise parse_error("unbalanced parentheses in the column list")


_CONSTRAINT_STARTS = {"PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "CONSTRAINT", "KEY", "INDEX"}


def _add_column(item: list[Token], names: list[list[Token]]) -> None:
    """Append the column an item defines, skipping WATERMARK FOR and table constraints."""
    if not item or not item[0].is_ident:
        return
    head = item[0].text.upper() if item[0].kind == WORD else ""
    second = item[1] if len(item) > 1 else None
    if head == "WATERMARK" and second is not None and second.is_word("FOR"):
        return
    if head in _CONSTRAINT_STARTS and _is_constraint(head, item):
        return
    names.append(item)


def _is_constraint(head: str, item: list[Token]) -> bool:
    """Whether an item starting with a constraint keyword is a constraint, not a column."""
    second = item[1] if len(item) > 1 else None
    third = item[2] if len(item) > 2 else None
    if second is None:
        return False
    if head in ("PRIMARY", "FOREIGN"):
        return second.is_word("KEY")
    if head == "UNIQUE":
        return second.is_punct("(") or second.is_word("KEY", "INDEX")
    if head == "CHECK":
        return second.is_punct("(")
    if head == "CONSTRAINT":
        return third is not None and third.is_word(
            "PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "NOT", "NULL"
        )
    return second.is_punct("(") or (third is not None and third.is_punct("("))


def column_names(create_source_sql: str) -> list[str]:
    """Column names declared by a CREATE SOURCE / CREATE TABLE, spelled as native stores them.

    Native keeps unquoted names' case (`X INT` gives column `X`) and removes quotes.
    """
    statement_tokens = split_tokens(create_source_sql)
    if len(statement_tokens) != 1:
        raise parse_error("expected one CREATE SOURCE or CREATE TABLE statement")
    tokens = statement_tokens[0]
    cur = _Cursor(create_source_sql, tokens)
    cur.accept("CREATE")
    cur.accept("OR", "REPLACE")
    if _object_kind(cur) not in (ObjectKind.SOURCE, ObjectKind.TABLE):
        raise parse_error("expected a CREATE SOURCE or CREATE TABLE statement")
    cur.accept("IF", "NOT", "EXISTS")
    cur.name()
    found = _column_list(tokens[cur.pos :])
    return [] if found is None else [item[0].ident for item in found[0]]


def _partitioned(sql: str, tokens: list[Token], rest: list[Token], st: Statement) -> Statement:
    """Extract, check and remove the PARTITION BY clause of a CREATE SOURCE / TABLE."""
    found = _column_list(rest)
    items, after = found if found is not None else ([], 0)
    columns = [item[0] for item in items]
    clause: tuple[int, int] | None = None
    keys: list[Token] = []
    depth = 0
    i = after
    while i < len(rest):
        token = rest[i]
        depth += token.is_punct("(") - token.is_punct(")")
        if depth == 0 and token.is_word("PARTITION"):
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            if nxt is None or not nxt.is_word("BY"):
                raise parse_error("expected BY after PARTITION")
            if clause is not None:
                raise parse_error("PARTITION BY given twice")
            keys, end = _partition_keys(rest, i + 2)
            clause = (i, end)
            i = end
            continue
        i += 1
    if clause is None:
        return st
    label = st.raw_name or "?"
    if found is None:
        raise parse_error(f"PARTITION BY of '{label}' needs a column list")
    resolved = tuple(_resolve(key, columns, label) for key in keys)
    if len(set(resolved)) != len(resolved):
        raise parse_error(f"PARTITION BY of '{label}' names a column twice")
    for item in items:
        if item[0].ident in resolved and len(item) > 1 and item[1].is_word("INTERVAL"):
            raise SchemaError(
                f"Invalid schema ({codes.INVALID_SCHEMA}): PARTITION BY column "
                f"'{item[0].ident}' of '{label}' is an INTERVAL, which cannot be a partition "
                "key (its rows could not be routed)",
                code=codes.INVALID_SCHEMA,
            )
    start, end = rest[clause[0]].start, rest[clause[1] - 1].end
    base = tokens[0].start
    head, tail = sql[base:start].rstrip(), sql[end : tokens[-1].end].strip()
    stripped = f"{head} {tail}" if tail else head
    return dataclasses.replace(st, sql=stripped, partition_by=resolved)


def _partition_keys(rest: list[Token], i: int) -> tuple[list[Token], int]:
    """The key identifiers after `PARTITION BY` starting at `rest[i]`, and the index after."""
    if i < len(rest) and rest[i].is_punct("("):
        keys: list[Token] = []
        i += 1
        while True:
            token = rest[i] if i < len(rest) else None
            if token is None or not token.is_ident:
                raise parse_error("expected a column name in PARTITION BY (...)")
            keys.append(token)
            sep = rest[i + 1] if i + 1 < len(rest) else None
            if sep is not None and sep.is_punct(","):
                i += 2
            elif sep is not None and sep.is_punct(")"):
                return keys, i + 2
            else:
                raise parse_error("expected ',' or ')' in PARTITION BY (...)")
    if i < len(rest) and rest[i].is_ident:
        return [rest[i]], i + 1
    raise parse_error("expected a column name after PARTITION BY")


def _resolve(key: Token, columns: list[Token], source: str) -> str:
    """The column a PARTITION BY key names: exact spelling first, else case-insensitive
    (unless the key is quoted)."""
    for column in columns:
        if column.ident == key.ident:
            return column.ident
    if key.kind != QUOTED:
        matches = [c.ident for c in columns if c.ident.lower() == key.ident.lower()]
        if len(matches) == 1:
            return matches[0]
    raise SchemaError(
        f"Schema mismatch ({codes.SCHEMA_MISMATCH}): PARTITION BY column '{key.ident}' "
        f"is not a column of source '{source}' (columns: {[c.ident for c in columns]})",
        code=codes.SCHEMA_MISMATCH,
    )


# ---------------------------------------------------------------------------- sqlglot


def referenced_tables(sql: str) -> set[str] | None:
    """The base tables a query reads: lower-cased unless quoted, schema prefix dropped,
    CTE names excluded where they are visible. None when sqlglot cannot parse the query,
    in which case the caller must assume every table."""
    tree = _parse(sql)
    if tree is None and "`" in sql:
        try:
            tree = _parse(_backquotes_to_double(sql))
        except QueryError:
            tree = None
    if tree is None:
        return None
    tables: set[str] = set()
    for table in tree.find_all(exp.Table):
        ident = table.this
        if not isinstance(ident, exp.Identifier):
            continue
        if not table.args.get("db") and _is_cte(table, _normalized(ident)):
            continue
        tables.add(_normalized(ident))
    return tables


def _normalized(ident: exp.Identifier) -> str:
    return str(ident.name) if ident.quoted else str(ident.name).lower()


def _parse(sql: str) -> exp.Expr | None:
    try:
        return sqlglot.parse_one(sql, read=SQLGLOT_DIALECT)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return None


def _backquotes_to_double(sql: str) -> str:
    """`sql` with `ident` rewritten as "ident" (native accepts both; postgres only the latter)."""
    out: list[str] = []
    last = 0
    for token in tokenize(sql):
        if token.kind == QUOTED and token.text[0] == "`":
            out += [sql[last : token.start], '"', token.ident.replace('"', '""'), '"']
            last = token.end
    return "".join([*out, sql[last:]])


def _is_cte(table: exp.Table, name: str) -> bool:
    """Whether an unqualified table reference names a CTE visible at its position: every CTE
    of an enclosing WITH from its main query, only the earlier ones (and itself if RECURSIVE)
    from inside a CTE body."""
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            ctes = list(with_.expressions)
            if child is with_:
                inner = _position_in(table, ctes)
                ctes = ctes[: inner + (1 if with_.args.get("recursive") else 0)]
            if any(_cte_name(cte) == name for cte in ctes):
                return True
        child = node
        node = node.parent
    return False


def _cte_name(cte: exp.Expr) -> str:
    alias = cte.args.get("alias")
    ident = alias.this if isinstance(alias, exp.TableAlias) else None
    return _normalized(ident) if isinstance(ident, exp.Identifier) else cte.alias_or_name


def _position_in(node: exp.Expr, candidates: list[exp.Expr]) -> int:
    """Index of the candidate that contains `node` (compared by identity)."""
    current: exp.Expr | None = node
    while current is not None:
        for i, candidate in enumerate(candidates):
            if current is candidate:
                return i
        current = current.parent
    raise AssertionError("node is not inside any candidate")
