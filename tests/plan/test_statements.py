"""Statement classification, PARTITION BY handling and table discovery for the coordinator.

Native facts that the module matches are checked against `laminardb_native` itself, so a
different engine version shows up here rather than as a wrong routing decision.
"""

from __future__ import annotations

import glob
import json
from typing import Any

import laminardb_native as native
import pytest

from laminardb.api.errors import QueryError, SchemaError, codes
from laminardb.plan.statements import (
    ObjectKind,
    StatementKind,
    classify,
    column_names,
    referenced_tables,
)
from laminardb.plan.tokens import split_statements

pytestmark = pytest.mark.timeout(60)

K = StatementKind


@pytest.mark.parametrize(
    ("sql", "kind", "name"),
    [
        ("SELECT 1", K.QUERY, None),
        ("  with a AS (SELECT 1) SELECT * FROM a", K.QUERY, None),
        ("VALUES (1), (2)", K.QUERY, None),
        ("(SELECT 1) UNION ALL (SELECT 2)", K.QUERY, None),
        ("CREATE SOURCE s (ts BIGINT)", K.CREATE_SOURCE, "s"),
        ("create table T (id BIGINT PRIMARY KEY, v DOUBLE)", K.CREATE_TABLE, "t"),
        ("CREATE STREAM st AS SELECT * FROM s", K.CREATE_STREAM, "st"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT k FROM s", K.CREATE_MATERIALIZED_VIEW, "mv"),
        ("CREATE VIEW v1 AS SELECT k FROM s", K.CREATE_VIEW, "v1"),
        ("CREATE SINK k1 FROM st WHERE v > 5", K.CREATE_SINK, "k1"),
        ("CREATE INDEX i ON s (a)", K.OTHER, None),
        ("DROP SOURCE s", K.DROP, "s"),
        ("ALTER SOURCE s1 ADD COLUMN z INT", K.ALTER, "s1"),
        ("INSERT INTO tt VALUES (1, 2.0)", K.INSERT, "tt"),
        ("INSERT INTO Tt (a, b) SELECT 1, 2", K.INSERT, "tt"),
        ("UPDATE tt SET v = 3 WHERE id = 1", K.UPDATE, "tt"),
        ("DELETE FROM tt WHERE id = 1", K.DELETE, "tt"),
        ("SHOW SOURCES", K.SHOW, None),
        ("DESCRIBE s1", K.DESCRIBE, "s1"),
        ("EXPLAIN SELECT * FROM s", K.EXPLAIN, None),
        ("TRUNCATE s1", K.OTHER, None),
    ],
)
def test_kind_and_name(sql: str, kind: StatementKind, name: str | None) -> None:
    st = classify(sql)
    assert (st.kind, st.name) == (kind, name)


def test_names_are_lowered_unless_quoted_and_raw_name_is_as_written() -> None:
    quoted = classify('CREATE SOURCE "My Src" (x INT)')
    assert (quoted.name, quoted.raw_name) == ("My Src", '"My Src"')
    plain = classify("CREATE SOURCE MySrc (x INT)")
    assert (plain.name, plain.raw_name) == ("mysrc", "MySrc")
    dotted = classify("DROP SOURCE public.Events")
    assert (dotted.name, dotted.raw_name) == ("events", "public.Events")


def test_raw_name_is_what_native_reports() -> None:
    conn = native.open(":memory:")
    try:
        for sql in ['CREATE SOURCE "My Src" (x INT)', "CREATE SOURCE Gx (X INT)"]:
            result = conn.execute(sql)
            assert result.ddl_object == classify(sql).raw_name
    finally:
        conn.close()


def test_comments_whitespace_and_semicolons_are_dropped() -> None:
    st = classify("  -- leading\n /* block; PARTITION BY (x) */ CREATE SOURCE s (x INT) ;; -- end")
    assert st.kind is K.CREATE_SOURCE
    assert st.sql == "CREATE SOURCE s (x INT)"
    assert st.partition_by == ()


def test_flags() -> None:
    st = classify("CREATE OR REPLACE SOURCE s (x INT)")
    assert st.or_replace and not st.if_not_exists
    st = classify("create source if not exists s (x INT)")
    assert st.if_not_exists and not st.or_replace and st.name == "s"
    st = classify("CREATE STREAM IF NOT EXISTS st2 AS SELECT * FROM s")
    assert st.if_not_exists and st.name == "st2"


@pytest.mark.parametrize(
    ("sql", "kind", "name", "if_exists", "cascade"),
    [
        ("DROP SOURCE IF EXISTS s2 CASCADE", ObjectKind.SOURCE, "s2", True, True),
        ("drop materialized view mv", ObjectKind.MATERIALIZED_VIEW, "mv", False, False),
        ("DROP VIEW vv", ObjectKind.VIEW, "vv", False, False),
        ("DROP STREAM IF EXISTS st", ObjectKind.STREAM, "st", True, False),
        ("DROP SINK sk", ObjectKind.SINK, "sk", False, False),
        ("DROP TABLE tt RESTRICT", ObjectKind.TABLE, "tt", False, False),
    ],
)
def test_drop(sql: str, kind: ObjectKind, name: str, if_exists: bool, cascade: bool) -> None:
    st = classify(sql)
    assert st.kind is K.DROP
    assert (st.drop_kind, st.name, st.if_exists, st.cascade) == (kind, name, if_exists, cascade)


def test_alter_has_object_kind_but_no_drop_kind() -> None:
    st = classify("ALTER SOURCE s1 ADD COLUMN z INT")
    assert (st.object_kind, st.drop_kind) == (ObjectKind.SOURCE, None)


def test_stream_query_and_emit_clause() -> None:
    st = classify(
        "CREATE STREAM w AS SELECT k, count(*) AS n FROM ev "
        "GROUP BY k, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE"
    )
    assert st.query == (
        "SELECT k, count(*) AS n FROM ev GROUP BY k, tumble(ts, INTERVAL '1' SECOND)"
    )
    assert st.emit == "EMIT ON WINDOW CLOSE"
    assert referenced_tables(st.query) == {"ev"}
    plain = classify("CREATE MATERIALIZED VIEW mv AS SELECT a AS emit_x FROM s")
    assert (plain.query, plain.emit) == ("SELECT a AS emit_x FROM s", None)


# ------------------------------------------------------------------------- PARTITION BY


@pytest.mark.parametrize(
    ("sql", "stripped", "keys"),
    [
        (
            "CREATE SOURCE s (k VARCHAR, v INT) PARTITION BY (k)",
            "CREATE SOURCE s (k VARCHAR, v INT)",
            ("k",),
        ),
        ("CREATE SOURCE s (k VARCHAR)PARTITION BY(k)", "CREATE SOURCE s (k VARCHAR)", ("k",)),
        ("CREATE SOURCE s (k VARCHAR) partition by k", "CREATE SOURCE s (k VARCHAR)", ("k",)),
        (
            "CREATE SOURCE s (a INT, b INT, c INT) PARTITION BY (b, a) WITH (buffer_size = 10)",
            "CREATE SOURCE s (a INT, b INT, c INT) WITH (buffer_size = 10)",
            ("b", "a"),
        ),
        (
            "CREATE SOURCE s (a INT) WITH (buffer_size = 10) PARTITION BY (a);",
            "CREATE SOURCE s (a INT) WITH (buffer_size = 10)",
            ("a",),
        ),
        (
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v DOUBLE) PARTITION BY (id)",
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v DOUBLE)",
            ("id",),
        ),
        (
            'CREATE SOURCE "My Src" ("Dev Id" VARCHAR, X INT) PARTITION BY ("Dev Id", x)',
            'CREATE SOURCE "My Src" ("Dev Id" VARCHAR, X INT)',
            ("Dev Id", "X"),
        ),
        (
            "CREATE SOURCE s (ts BIGINT, k VARCHAR, "
            "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) PARTITION BY (k)",
            "CREATE SOURCE s (ts BIGINT, k VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
            ("k",),
        ),
    ],
)
def test_partition_by_is_parsed_and_stripped(
    sql: str, stripped: str, keys: tuple[str, ...]
) -> None:
    st = classify(sql)
    assert st.sql == stripped
    assert st.partition_by == keys


def test_partition_by_words_inside_strings_and_parens_are_not_a_clause() -> None:
    sql = (
        "CREATE SOURCE s (k VARCHAR DEFAULT 'PARTITION BY (z)') WITH (topic = 'x PARTITION BY (q)')"
    )
    st = classify(sql)
    assert st.partition_by == ()
    assert st.sql == sql


def test_stripped_ddl_is_accepted_by_native() -> None:
    conn = native.open(":memory:")
    try:
        st = classify(
            "CREATE SOURCE ev (ts BIGINT, k VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
            " PARTITION BY (k) WITH (buffer_size = 1024)"
        )
        assert "PARTITION" not in st.sql.upper()
        assert conn.execute(st.sql).ddl_object == "ev"
        assert [s.name for s in conn.sources()] == ["ev"]
        assert conn.sources()[0].schema.names == column_names(st.sql) == ["ts", "k"]
    finally:
        conn.close()


def test_unknown_partition_column_is_a_schema_error_naming_source_and_column() -> None:
    with pytest.raises(SchemaError) as info:
        classify("CREATE SOURCE orders (id BIGINT, cust VARCHAR) PARTITION BY (customer)")
    message = str(info.value)
    assert "orders" in message and "customer" in message


def test_quoted_partition_column_must_match_exactly() -> None:
    with pytest.raises(SchemaError):
        classify('CREATE SOURCE s (abc INT) PARTITION BY ("ABC")')
    assert classify("CREATE SOURCE s (abc INT) PARTITION BY (ABC)").partition_by == ("abc",)


def test_watermark_and_constraints_are_not_partition_columns() -> None:
    with pytest.raises(SchemaError):
        classify(
            "CREATE SOURCE s (ts BIGINT, WATERMARK FOR ts AS ts - 1000) PARTITION BY (watermark)"
        )


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE SOURCE s (a INT) PARTITION BY (a) PARTITION BY (a)",
        "CREATE SOURCE s (a INT) PARTITION BY ()",
        "CREATE SOURCE s (a INT) PARTITION BY (a,",
        "CREATE SOURCE s (a INT) PARTITION (a)",
        "CREATE SOURCE s (a INT, b INT) PARTITION BY (a, A)",
        "CREATE TABLE t AS SELECT 1 AS a PARTITION BY (a)",
    ],
)
def test_malformed_partition_by_is_a_parse_error(sql: str) -> None:
    with pytest.raises(QueryError) as info:
        classify(sql)
    assert info.value.code == codes.SQL_PARSE_ERROR


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("CREATE SOURCE s (ts BIGINT, device VARCHAR, value DOUBLE)", ["ts", "device", "value"]),
        (
            "CREATE SOURCE s (ts TIMESTAMP, v DECIMAL(10, 2), "
            "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
            ["ts", "v"],
        ),
        ("CREATE TABLE t (a INT, b INT, PRIMARY KEY (a), CONSTRAINT c1 UNIQUE (b))", ["a", "b"]),
        ("CREATE SOURCE s (key VARCHAR, primary INT, value DOUBLE)", ["key", "primary", "value"]),
        ('CREATE SOURCE s ("A b" INT, X INT, "q""t" INT)', ["A b", "X", 'q"t']),
        ("CREATE SOURCE IF NOT EXISTS s (a INT NOT NULL, b INT DEFAULT 3)", ["a", "b"]),
    ],
)
def test_column_names(sql: str, names: list[str]) -> None:
    assert column_names(sql) == names


def test_column_names_rejects_other_statements() -> None:
    with pytest.raises(QueryError):
        column_names("CREATE STREAM x AS SELECT 1")


# ------------------------------------------------------------------------- statement lists


def test_split_statements_respects_strings_comments_and_quotes() -> None:
    sql = (
        "SELECT 'a;b' AS x; -- c; d\n SELECT 1 AS \"p;q\" /* ; */;;"
        " SELECT $$e;f$$ AS y; SELECT `g;h` FROM t;"
    )
    assert split_statements(sql) == [
        "SELECT 'a;b' AS x",
        'SELECT 1 AS "p;q"',
        "SELECT $$e;f$$ AS y",
        "SELECT `g;h` FROM t",
    ]
    assert split_statements(" ; -- nothing\n ;") == []


def test_native_runs_every_statement_and_returns_the_last() -> None:
    conn = native.open(":memory:")
    try:
        result = conn.execute("CREATE SOURCE a (x INT); CREATE SOURCE b (x INT)")
        assert result.ddl_object == "b"
        assert sorted(s.name for s in conn.sources()) == ["a", "b"]
        assert split_statements("CREATE SOURCE a (x INT); CREATE SOURCE b (x INT)") == [
            "CREATE SOURCE a (x INT)",
            "CREATE SOURCE b (x INT)",
        ]
    finally:
        conn.close()


def test_classify_takes_exactly_one_statement() -> None:
    with pytest.raises(QueryError) as many:
        classify("CREATE SOURCE a (x INT); CREATE SOURCE b (x INT)")
    assert many.value.code == codes.SQL_PARSE_ERROR
    with pytest.raises(QueryError) as empty:
        classify(" ; -- nothing")
    assert empty.value.code == codes.QUERY_FAILED
    assert "Empty SQL statement" in str(empty.value)


@pytest.mark.parametrize("sql", ["SELECT 'open", 'SELECT "open', "SELECT 1 /* open"])
def test_unterminated_quotes_are_parse_errors(sql: str) -> None:
    with pytest.raises(QueryError) as info:
        classify(sql)
    assert info.value.code == codes.SQL_PARSE_ERROR


# ------------------------------------------------------------------------- referenced tables


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT * FROM a JOIN b ON a.x = b.x LEFT JOIN c USING (x)", {"a", "b", "c"}),
        (
            "SELECT * FROM a WHERE x IN (SELECT y FROM b) AND EXISTS (SELECT 1 FROM c)",
            {"a", "b", "c"},
        ),
        ("SELECT x FROM a UNION ALL SELECT x FROM b EXCEPT SELECT x FROM c", {"a", "b", "c"}),
        ("SELECT (SELECT max(x) FROM e) AS m", {"e"}),
        ("SELECT * FROM (SELECT * FROM inner_t) AS alias_t", {"inner_t"}),
        ("WITH t AS (SELECT 1 AS x) SELECT * FROM t", set()),
        ("WITH t AS (SELECT * FROM t) SELECT * FROM t", {"t"}),
        ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b", {"b"}),
        ("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r", set()),
        ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s JOIN x ON true", {"x"}),
        ("SELECT k, count(*) FROM ev GROUP BY k, tumble(ts, INTERVAL '1' SECOND)", {"ev"}),
        ('SELECT * FROM "My T" JOIN public.T2 ON true', {"My T", "t2"}),
        ("SELECT * FROM Events", {"events"}),
        ("SELECT `a b`.x FROM `a b`", {"a b"}),
        ("SELECT * FROM generate_series(1, 3)", set()),
        ("VALUES (1)", set()),
    ],
)
def test_referenced_tables(sql: str, tables: set[str]) -> None:
    assert referenced_tables(sql) == tables


def test_referenced_tables_is_none_when_unparseable() -> None:
    assert referenced_tables("SELEC 1") is None


def _corpus() -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = []
    for path in sorted(glob.glob("/work/shared/conformance/*.json")):
        with open(path) as f:
            queries += json.load(f)["queries"]
    return queries


def test_conformance_corpus_tables_are_found() -> None:
    corpus = _corpus()
    if not corpus:
        pytest.skip("conformance corpus not present")
    unparsed, missing, extra = [], [], []
    for query in corpus:
        found = referenced_tables(query["sql"])
        if found is None:
            unparsed.append(query["id"])
        elif not set(query["tables"]) <= found:
            missing.append((query["id"], query["tables"], found))
        elif found != set(query["tables"]):
            extra.append(query["id"])
    assert missing == []
    assert len(unparsed) <= 2, unparsed
    assert len(extra) <= 5, extra
