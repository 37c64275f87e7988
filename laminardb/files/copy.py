"""SQL `COPY`: files into a source, query results out to files.

    COPY t FROM 'path/or/glob' [WITH] [(FORMAT csv, HEADER true, DELIMITER ',')]
    COPY (SELECT ...) TO 'path' [WITH] [(FORMAT parquet|csv|json, ...)]
    COPY t TO 'path' ...                        -- the whole of t

Options may be written `name value`, `name = value` or bare `name` (true), as in DuckDB and
PostgreSQL. `COPY ... FROM` runs `Connection.load`; `COPY ... TO` runs the query like
`sql()` does and writes its result (laminardb/files/write.py). Both report the row count.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from laminardb.api.errors import LaminarError, QueryError, codes
from laminardb.api.results import ExecuteResult, QueryResult
from laminardb.cluster.catalog import quote
from laminardb.files import load, write
from laminardb.files.options import FileOptions, resolve
from laminardb.plan import statements
from laminardb.plan.tokens import Token, tokenize
from laminardb.wire import protocol

if TYPE_CHECKING:
    from laminardb.api.connection import Connection


@dataclass(frozen=True)
class CopyStatement:
    """A parsed COPY: `table` (FROM, or TO of a whole table) or `query` (TO), the path, options."""

    direction: str
    path: str
    table: str | None = None
    query: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def parse(sql: str) -> CopyStatement:
    """Parse one COPY statement; a malformed one is a QueryError (SQL parse error, 401)."""
    tokens = list(tokenize(sql))
    if not tokens or not tokens[0].is_word("COPY") or len(tokens) < 2:
        raise _syntax(sql, "expected COPY <table> FROM '<path>' or COPY (<query>) TO '<path>'")
    i = 1
    table = query = None
    if tokens[1].is_punct("("):
        close = _matching(tokens, 1, sql)
        query = sql[tokens[2].start : tokens[close - 1].end] if close > 2 else ""
        i = close + 1
    else:
        if not tokens[1].is_ident:
            raise _syntax(sql, "expected a table name or (query) after COPY")
        i = 2
        while i + 1 < len(tokens) and tokens[i].is_punct(".") and tokens[i + 1].is_ident:
            i += 2
        table = tokens[i - 1].normalized
    if i >= len(tokens) or not tokens[i].is_word("FROM", "TO"):
        raise _syntax(sql, "expected FROM or TO")
    direction = tokens[i].text.upper()
    if query is not None and direction == "FROM":
        raise _syntax(sql, "COPY (query) can only go TO a file")
    if i + 1 >= len(tokens) or tokens[i + 1].kind != "string":
        raise _syntax(sql, f"expected a quoted path after {direction}")
    path = _string(tokens[i + 1])
    options = _options(tokens[i + 2 :], sql)
    return CopyStatement(direction, path, table, query, options)


def run(conn: Connection, stmt: statements.Statement) -> ExecuteResult:
    """Execute a COPY (the caller holds the connection lock); the result counts the rows."""
    copy = parse(stmt.sql)
    options = dict(copy.options)
    fmt = options.pop("format", None)
    if copy.direction == "FROM":
        assert copy.table is not None
        return ExecuteResult.affected(load.load(conn, copy.table, copy.path, fmt, options))
    sql = copy.query if copy.query is not None else f"SELECT * FROM {quote(copy.table or '')}"
    folder = write.is_folder(copy.path)
    opts = resolve(copy.path if not folder else f"x.{fmt or 'parquet'}", fmt, options)
    if folder:
        if write.per_worker_source(sql, conn._catalog) is not None:
            return ExecuteResult.affected(_write_per_worker(conn, sql, copy.path, opts))
        return ExecuteResult.affected(write.write_parts([conn._run_query(sql)], copy.path, opts))
    return ExecuteResult.affected(write.write_table(conn._run_query(sql), copy.path, opts))


def run_sql(conn: Connection, stmt: statements.Statement) -> QueryResult:
    """COPY through `sql()`: one row holding the count, as DuckDB answers."""
    rows = run(conn, stmt).rows_affected
    return QueryResult(pa.table({"Count": pa.array([rows], pa.int64())}))


def _write_per_worker(conn: Connection, sql: str, folder: str, opts: FileOptions) -> int:
    """Each worker writes its answer to a plain per-worker query (their union is the exact
    answer) to its own part file; the rows written. When one fails, every part is removed."""
    conn._router.flush()
    write.make_folder(folder)
    cluster = conn._cluster
    paths = [write.part_path(folder, i, opts) for i in range(len(cluster.workers))]
    pending: dict[int, int] = {}
    try:
        try:
            for shard, path in enumerate(paths):
                rid = cluster.new_rid()
                request = protocol.WriteQuery(rid, sql, path, opts.format, opts.to_wire())
                cluster.send(shard, request)
                pending[rid] = shard
        except BaseException:
            with contextlib.suppress(LaminarError):  # let those sent finish first
                cluster.collect(pending)
            raise
        replies = cluster.collect(pending)  # raises only once every reply is in
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    conn._log_query(sql)
    return sum(int(r.value) for r in replies.values())


def _options(tokens: list[Token], sql: str) -> dict[str, Any]:
    if tokens and tokens[0].is_word("WITH"):
        tokens = tokens[1:]
    if not tokens:
        return {}
    if not tokens[0].is_punct("(") or not tokens[-1].is_punct(")"):
        raise _syntax(sql, "options go in parentheses: WITH (FORMAT csv, HEADER true)")
    out: dict[str, Any] = {}
    items: list[list[Token]] = [[]]
    for token in tokens[1:-1]:
        if token.is_punct(","):
            items.append([])
        else:
            items[-1].append(token)
    for item in items:
        item = [t for t in item if not t.is_punct("=")]
        if not item:
            continue
        if not item[0].is_ident or len(item) > 2:
            raise _syntax(sql, f"bad option {' '.join(t.text for t in item)!r}")
        name = item[0].text.lower()
        out[name] = True if len(item) == 1 else _value(item[1])
    return out


def _value(token: Token) -> Any:
    if token.kind == "string":
        return _string(token)
    if token.kind == "quoted":
        return token.ident
    return token.text


def _string(token: Token) -> str:
    text = token.text
    if text[:1] in ("e", "E"):
        text = text[1:]
    return text[1:-1].replace("''", "'")


def _matching(tokens: list[Token], open_at: int, sql: str) -> int:
    depth = 0
    for j in range(open_at, len(tokens)):
        if tokens[j].is_punct("("):
            depth += 1
        elif tokens[j].is_punct(")"):
            depth -= 1
            if depth == 0:
                return j
    raise _syntax(sql, "unbalanced parentheses")


def _syntax(sql: str, message: str) -> QueryError:
    return QueryError(
        f"SQL parse error ({codes.SQL_PARSE_ERROR}): {message}: {sql}",
        code=codes.SQL_PARSE_ERROR,
    )
