"""Statements through `execute()`/`sql()`/`explain()` on a cluster, against one native instance.

Every statement runs on both sides (the cluster `db2` and a native instance holding the same
catalog and rows); results, result types, reprs, error classes, codes and messages must agree.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb

pytestmark = pytest.mark.timeout(120)

_ids = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


@pytest.fixture(scope="module")
def nat() -> Iterator[Any]:
    conn = native.open(":memory:")
    yield conn
    conn.close()


def outcome(call: Any) -> tuple[str, Any]:
    """('ok', value) or (class name, (code, message))."""
    try:
        return "ok", call()
    except Exception as exc:
        return type(exc).__name__, (getattr(exc, "code", None), str(exc))


def same(db2: Any, nat: Any, method: str, *args: Any) -> Any:
    """Call `method(*args)` on both; the outcomes (value repr or error) must be equal."""
    ours = outcome(lambda: getattr(db2, method)(*args))
    theirs = outcome(lambda: getattr(nat, method)(*args))
    if ours[0] == "ok" and theirs[0] == "ok":
        assert repr(ours[1]) == repr(theirs[1]), (method, args)
    else:
        assert ours == theirs, (method, args)
    return ours[1]


def bag(rows: list[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    return Counter(rows)


def rows_equal(db2: Any, nat: Any, sql: str) -> list[tuple[Any, ...]]:
    ours = db2.sql(sql)
    theirs = nat.sql(sql)
    assert ours.schema == theirs.schema, sql
    got = ours.fetchall()
    assert bag(got) == bag(theirs.fetchall()), sql
    return got  # type: ignore[no-any-return]


def source_rows(db2: Any, nat: Any, name: str, data: pa.Table) -> None:
    db2.insert(name, data)
    nat.insert(name, data)


# ---------------------------------------------------------------------------------------------
# DDL reaches every worker, atomically
# ---------------------------------------------------------------------------------------------


def test_ddl_reaches_every_worker(db2: Any, nat: Any) -> None:
    name = fresh("every")
    ddl = f"CREATE SOURCE {name} (k VARCHAR, v BIGINT)"
    same(db2, nat, "execute", ddl)
    assert name in db2.list_tables()
    # Rows spread over both workers are all answered: each worker holds the source.
    data = pa.table({"k": [f"k{i}" for i in range(64)], "v": pa.array(range(64), pa.int64())})
    before = [w.rows_ingested for w in db2.workers()]
    for i in range(4):
        chunk = data.slice(i * 16, 16)
        db2.insert(name, chunk)
        nat.insert(name, chunk)
        db2.sql("SELECT 1")  # ship before the next, so round-robin uses every worker
    after = [w.rows_ingested for w in db2.workers()]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    rows_equal(db2, nat, f"SELECT k, v FROM {name}")
    # Every worker's catalog has it (and none has the hidden drains in sight).
    per_worker = db2._broadcast_call("list_tables", [])
    assert len(per_worker) == len(db2.workers())
    assert all(name in tables for tables in per_worker), per_worker


def test_keyed_ddl_reaches_every_worker(db2: Any, nat: Any) -> None:
    name = fresh("every_keyed")
    db2.execute(f"CREATE SOURCE {name} (k VARCHAR, v BIGINT) PARTITION BY (k)")
    nat.execute(f"CREATE SOURCE {name} (k VARCHAR, v BIGINT)")
    data = pa.table(
        {"k": [f"k{i % 20}" for i in range(200)], "v": pa.array(range(200), pa.int64())}
    )
    source_rows(db2, nat, name, data)
    rows_equal(db2, nat, f"SELECT k, count(*) AS n, sum(v) AS s FROM {name} GROUP BY k")
    stream = fresh("every_stream")
    same(
        db2,
        nat,
        "execute",
        f"CREATE STREAM {stream} AS SELECT k, count(*) AS n FROM {name} GROUP BY k",
    )
    assert all(stream in s for s in db2._broadcast_call("list_streams", []))


def test_duplicate_source_fails_like_native_and_changes_nothing(db2: Any, nat: Any) -> None:
    name = fresh("dup")
    ddl = f"CREATE SOURCE {name} (a BIGINT, b VARCHAR)"
    same(db2, nat, "execute", ddl)
    source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2], pa.int64()), "b": ["x", "y"]}))
    tables = sorted(db2.list_tables())
    for again in (ddl, f"CREATE SOURCE {name} (z DOUBLE)"):
        with pytest.raises(laminardb.SchemaError) as info:
            db2.execute(again)
        assert info.value.code == laminardb.codes.TABLE_EXISTS == 201
        assert str(info.value) == f"Table exists (201): Table already exists: {name}"
        same(db2, nat, "execute", again)
    assert sorted(db2.list_tables()) == tables
    assert db2.schema(name) == nat.schema(name)
    rows_equal(db2, nat, f"SELECT a, b FROM {name}")
    assert db2.insert(name, {"a": [3], "b": ["z"]}) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE SOURC broken (a BIGINT)",
        "CREATE SOURCE broken (a BIGINT",
        "CREATE SOURCE broken (a NOTATYPE)",
        "SELEC 1",
        "CREATE SOURCE broken (a BIGINT, PRIMARY KEY (a))",
    ],
)
def test_bad_ddl_fails_like_native_and_creates_nothing(db2: Any, nat: Any, sql: str) -> None:
    tables = sorted(db2.list_tables())
    streams = sorted(db2.list_streams())
    ours = outcome(lambda: db2.execute(sql))
    theirs = outcome(lambda: nat.execute(sql))
    assert (ours[0], ours[1][0]) == (theirs[0], theirs[1][0])  # class and code
    assert ours[0] == "QueryError" and ours[1][0] == laminardb.codes.SQL_PARSE_ERROR == 401
    assert sorted(db2.list_tables()) == tables
    assert sorted(db2.list_streams()) == streams
    assert "broken" not in db2.list_tables()


def test_bad_partition_by_creates_nothing(db2: Any) -> None:
    name = fresh("badkey")
    with pytest.raises(laminardb.SchemaError) as info:
        db2.execute(f"CREATE SOURCE {name} (a BIGINT) PARTITION BY (nope)")
    assert name in str(info.value) and "nope" in str(info.value)
    assert name not in db2.list_tables()
    with pytest.raises(laminardb.QueryError):
        db2.execute(f"CREATE SOURCE {name} (a BIGINT) PARTITION BY ()")
    assert name not in db2.list_tables()
    db2.execute(f"CREATE SOURCE {name} (a BIGINT) PARTITION BY (a)")
    assert db2.insert(name, {"a": [1, 2]}) == 2


def test_if_not_exists_and_or_replace_like_native(db2: Any, nat: Any) -> None:
    name = fresh("idem")
    same(db2, nat, "execute", f"CREATE SOURCE {name} (a BIGINT)")
    source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2, 3], pa.int64())}))
    same(db2, nat, "execute", f"CREATE SOURCE IF NOT EXISTS {name} (z DOUBLE)")
    assert db2.schema(name) == nat.schema(name) == pa.schema([("a", pa.int64())])
    rows_equal(db2, nat, f"SELECT a FROM {name}")
    same(db2, nat, "execute", f"CREATE OR REPLACE SOURCE {name} (z DOUBLE, w VARCHAR)")
    assert db2.schema(name) == nat.schema(name)
    rows_equal(db2, nat, f"SELECT * FROM {name}")
    assert db2.insert(name, {"z": [1.5], "w": ["q"]}) == 1
    with pytest.raises(laminardb.SchemaError, match="'a'"):
        db2.insert(name, {"a": [1]})


def test_multi_statement_strings_like_native(db2: Any, nat: Any) -> None:
    a, b = fresh("multi_a"), fresh("multi_b")
    script = f"""
        -- two sources, then a query: the last statement's result is returned
        CREATE SOURCE {a} (x BIGINT, s VARCHAR);
        CREATE SOURCE {b} (y DOUBLE);
        SELECT 41 + 1 AS answer;
    """
    ours = same(db2, nat, "execute", script)
    assert ours.result_type == "query"
    assert ours.to_query_result().fetchall() == [(42,)]
    assert {a, b} <= set(db2.list_tables())
    # Failing in the middle: what came before stays, what follows is not run (as native).
    c, d = fresh("multi_c"), fresh("multi_d")
    failing = (
        f"CREATE SOURCE {c} (x BIGINT); CREATE SOURCE {a} (x BIGINT); CREATE SOURCE {d} (x BIGINT)"
    )
    same(db2, nat, "execute", failing)
    mine = {a, b, c, d}
    assert mine & set(db2.list_tables()) == mine & set(nat.list_tables()) == {a, b, c}
    # A semicolon inside a string literal is not a statement separator.
    same(db2, nat, "execute", f"INSERT INTO {a} VALUES (1, 'semi;colon')")
    rows_equal(db2, nat, f"SELECT x, s FROM {a}")
    # sql() too runs every statement and returns the last one's rows.
    e = fresh("multi_e")
    rows_equal(db2, nat, f"CREATE SOURCE {e} (x BIGINT); SELECT count(*) AS n FROM {a}")
    assert e in db2.list_tables()
    rows_equal(db2, nat, f"SELECT 1 AS one; SELECT x FROM {a} WHERE x = 1")


def test_empty_statement_like_native(db2: Any, nat: Any) -> None:
    for sql in ("", "   ", ";"):
        ours = outcome(lambda sql=sql: db2.execute(sql))
        theirs = outcome(lambda sql=sql: nat.execute(sql))
        assert ours[0] == theirs[0] == "QueryError", (sql, ours, theirs)
        assert ours == theirs
    same(db2, nat, "sql", "")


def test_drop_source_then_recreate(db2: Any, nat: Any) -> None:
    name = fresh("dropped")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (a BIGINT, b VARCHAR)")
    source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2], pa.int64()), "b": ["x", "y"]}))
    same(db2, nat, "execute", f"DROP SOURCE {name}")
    assert name not in db2.list_tables()
    same(db2, nat, "sql", f"SELECT * FROM {name}")  # the native "not found" error
    with pytest.raises(laminardb.SchemaError, match=name):
        db2.insert(name, {"a": [1], "b": ["x"]})
    same(db2, nat, "execute", f"DROP SOURCE {name}")  # gone: native's SchemaError 200
    same(db2, nat, "execute", f"DROP SOURCE IF EXISTS {name}")
    # Re-created with another schema and a key: empty, validated against the new schema.
    db2.execute(f"CREATE SOURCE {name} (a DOUBLE, c VARCHAR) PARTITION BY (c)")
    nat.execute(f"CREATE SOURCE {name} (a DOUBLE, c VARCHAR)")
    assert db2.schema(name) == nat.schema(name)
    rows_equal(db2, nat, f"SELECT count(*) FROM {name}")
    with pytest.raises(laminardb.SchemaError, match="'b'"):
        db2.insert(name, {"a": [1], "b": ["x"]})
    source_rows(db2, nat, name, pa.table({"a": [1.5, 2.5], "c": ["p", "q"]}))
    rows_equal(db2, nat, f"SELECT a, c FROM {name}")
    assert {s.name: s.partition_by for s in db2.sources()}[name] == ["c"]


def test_drop_of_the_wrong_kind_is_refused_and_changes_nothing(db2: Any) -> None:
    """Natively `DROP TABLE` of a source half-drops it (queries fail, inserts land, the name
    cannot be made again); here it is refused with the statement that would drop it."""
    source, table = fresh("kind_src"), fresh("kind_tbl")
    db2.execute(f"CREATE SOURCE {source} (a BIGINT)")
    db2.execute(f"CREATE TABLE {table} (a BIGINT PRIMARY KEY, b VARCHAR)")
    db2.insert(source, {"a": [1, 2]})
    for sql, hint in (
        (f"DROP TABLE {source}", f"DROP SOURCE {source}"),
        (f"DROP TABLE IF EXISTS {source}", f"DROP SOURCE {source}"),
        (f"DROP SOURCE {table}", f"DROP TABLE {table}"),
    ):
        with pytest.raises(laminardb.SchemaError, match=f"not a .*: {hint} drops it") as info:
            db2.execute(sql)
        assert info.value.code == laminardb.codes.TABLE_NOT_FOUND
    assert source in db2.list_tables() and source in {s.name for s in db2.sources()}
    assert db2.sql(f"SELECT count(*) AS n FROM {table}").to_dicts() == {"n": [0]}
    assert db2.insert(source, {"a": [3]}) == 1
    assert db2.sql(f"SELECT count(*) AS n FROM {source}").to_dicts() == {"n": [3]}
    db2.execute(f"DROP SOURCE {source}")
    db2.execute(f"DROP TABLE {table}")
    assert source not in db2.list_tables()
    with pytest.raises(laminardb.QueryError, match="not found"):
        db2.sql(f"SELECT * FROM {table}")


def test_drop_source_with_dependents_fails_like_native_and_keeps_it(db2: Any, nat: Any) -> None:
    name, stream = fresh("depended"), fresh("dependent")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (a BIGINT)")
        db.execute(f"CREATE STREAM {stream} AS SELECT a FROM {name} WHERE a > 0")
    source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2], pa.int64())}))
    same(db2, nat, "execute", f"DROP SOURCE {name}")
    assert name in db2.list_tables() and stream in db2.list_streams()
    rows_equal(db2, nat, f"SELECT a FROM {name}")
    assert db2.insert(name, {"a": [3]}) == 1
    nat.insert(name, pa.table({"a": pa.array([3], pa.int64())}))
    rows_equal(db2, nat, f"SELECT a FROM {name}")
    same(db2, nat, "execute", f"DROP STREAM {stream}")
    same(db2, nat, "execute", f"DROP SOURCE {name}")
    assert name not in db2.list_tables()


def test_alter_source_add_column(db2: Any, nat: Any) -> None:
    name = fresh("altered")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (x DOUBLE)")
    source_rows(db2, nat, name, pa.table({"x": [1.0]}))
    same(db2, nat, "execute", f"ALTER SOURCE {name} ADD COLUMN y VARCHAR")
    assert (
        db2.schema(name) == nat.schema(name) == pa.schema([("x", pa.float64()), ("y", pa.string())])
    )
    assert {s.name: len(s.schema) for s in db2.sources()}[name] == 2
    # Inserts are checked against the altered schema.
    with pytest.raises(laminardb.SchemaError, match="'y'"):
        db2.insert(name, {"x": [2.0]})
    source_rows(db2, nat, name, pa.table({"x": [2.0], "y": ["q"]}))
    rows_equal(db2, nat, f"SELECT * FROM {name}")


def test_create_table_insert_update_query(db2: Any, nat: Any) -> None:
    name = fresh("pk_table")
    same(db2, nat, "execute", f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, v VARCHAR)")
    same(db2, nat, "execute", f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    same(db2, nat, "execute", f"INSERT INTO {name} VALUES (2, 'B')")  # upsert by key
    same(db2, nat, "execute", f"UPDATE {name} SET v = 'z' WHERE id = 1")
    same(db2, nat, "execute", f"DELETE FROM {name} WHERE id = 3")
    rows_equal(db2, nat, f"SELECT id, v FROM {name}")
    rows_equal(db2, nat, f"SELECT id, v FROM {name} ORDER BY id LIMIT 10")
    same(db2, nat, "insert", name, {"id": [9], "v": ["no"]})  # a table is not a source
    assert sorted(db2.sql("SHOW TABLES").fetchall()) == sorted(nat.sql("SHOW TABLES").fetchall())


def test_insert_values_into_a_source_is_validated(db2: Any, nat: Any) -> None:
    name = fresh("values")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE)")
    same(db2, nat, "execute", f"INSERT INTO {name} VALUES (1, 'a', 1.5), (2, 'b', 2.5)")
    rows_equal(db2, nat, f"SELECT ts, device, value FROM {name}")
    # A column list is honoured (native ignores it and fills the columns by position).
    assert int(db2.execute(f"INSERT INTO {name} (device, value, ts) VALUES ('c', 3.5, 3)")) == 1
    assert db2.sql(f"SELECT ts, device, value FROM {name} WHERE ts = 3").fetchall() == [
        (3, "c", 3.5)
    ]
    # The values are the engine's own evaluation of the text (`^` is XOR to it, `$$x$$` 'x').
    evaluated = fresh("evaluated")
    db2.execute(f"CREATE SOURCE {evaluated} (ts BIGINT, device VARCHAR, value DOUBLE)")
    values = "(2 ^ 3, $$x$$ || 'y', round(2.5)), (7 / 2, 'z', 1.0 / 4)"
    assert int(db2.execute(f"INSERT INTO {evaluated} VALUES {values}")) == 2
    got = db2.sql(f"SELECT ts, device, value FROM {evaluated}").fetchall()
    assert (
        bag(got)
        == bag(nat.sql(f"VALUES {values}").fetchall())
        == bag([(1, "xy", 3.0), (3, "z", 0.25)])
    )
    # A column left out of the list is NULL (native fills the listed values in by position).
    assert int(db2.execute(f"INSERT INTO {name} (ts, value) VALUES (4, 4.5)")) == 1
    assert db2.sql(f"SELECT ts, device, value FROM {name} WHERE ts = 4").fetchall() == [
        (4, None, 4.5)
    ]
    # Native accepts these and poisons the source; the cluster refuses them and stays usable.
    for bad in (
        f"INSERT INTO {name} VALUES ('x', 'a', 1.0)",
        f"INSERT INTO {name} VALUES (1, 'a')",
        f"INSERT INTO {name} VALUES (1, 'a', 1.0, 99)",
        f"INSERT INTO {name} (ts, nope) VALUES (1, 'a')",
    ):
        with pytest.raises(laminardb.SchemaError) as info:
            db2.execute(bad)
        assert name in str(info.value)
    with pytest.raises(laminardb.QueryError, match=r"cannot parse INSERT: Expecting \) at line 1"):
        db2.execute(f"INSERT INTO {name} VALUES (1, 'a'")
    assert db2.sql(f"SELECT count(*), sum(ts) FROM {name}").fetchall() == [(4, 10)]


def test_insert_select_into_a_source(db2: Any) -> None:
    """Native cannot INSERT ... SELECT into a source ("not implemented"); the cluster can."""
    src, dst = fresh("ins_src"), fresh("ins_dst")
    db2.execute(f"CREATE SOURCE {src} (a BIGINT, b VARCHAR) PARTITION BY (b)")
    db2.execute(f"CREATE SOURCE {dst} (a BIGINT, b VARCHAR)")
    db2.insert(src, {"a": [1, 2, 3], "b": ["x", "y", "z"]})
    result = db2.execute(f"INSERT INTO {dst} SELECT a * 10, b FROM {src} WHERE a > 1")
    assert (result.result_type, result.rows_affected) == ("rows_affected", 2)
    assert sorted(db2.sql(f"SELECT a, b FROM {dst}").fetchall()) == [(20, "y"), (30, "z")]
    with pytest.raises(laminardb.SchemaError, match=dst):
        db2.execute(f"INSERT INTO {dst} SELECT b, a FROM {src}")
    assert db2.sql(f"SELECT count(*) FROM {dst}").fetchall() == [(2,)]


# ---------------------------------------------------------------------------------------------
# Results of execute() and sql()
# ---------------------------------------------------------------------------------------------


def test_execute_select_result_like_native(db2: Any, nat: Any) -> None:
    name = fresh("exsel")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (a BIGINT, b VARCHAR)")
    source_rows(
        db2, nat, name, pa.table({"a": pa.array([1, 2, 3], pa.int64()), "b": ["x", "y", None]})
    )
    for sql in (f"SELECT a, b FROM {name} ORDER BY a LIMIT 5", "SELECT 1 + 1 AS answer"):
        ours, theirs = db2.execute(sql), nat.execute(sql)
        assert type(ours).__name__ == type(theirs).__name__ == "ExecuteResult"
        assert repr(ours) == repr(theirs)
        assert (ours.result_type, ours.rows_affected, ours.ddl_type, ours.ddl_object) == (
            theirs.result_type,
            theirs.rows_affected,
            theirs.ddl_type,
            theirs.ddl_object,
        )
        assert (int(ours), bool(ours)) == (int(theirs), bool(theirs))
        q_ours, q_theirs = ours.to_query_result(), theirs.to_query_result()
        assert type(q_ours).__name__ == type(q_theirs).__name__ == "QueryResult"
        assert repr(q_ours) == repr(q_theirs)
        assert q_ours.fetchall() == q_theirs.fetchall()


def test_execute_ddl_result_like_native(db2: Any, nat: Any) -> None:
    name = fresh("exddl")
    for sql in (
        f"CREATE SOURCE {name} (a BIGINT)",
        f"ALTER SOURCE {name} ADD COLUMN b VARCHAR",
        f"CREATE STREAM {name}_s AS SELECT a FROM {name}",
        f"CREATE SINK {name}_k FROM {name}_s",
        f"DROP SINK {name}_k",
        f"DROP STREAM {name}_s",
        f"DROP SOURCE {name}",
    ):
        ours, theirs = db2.execute(sql), nat.execute(sql)
        assert repr(ours) == repr(theirs)
        assert (ours.result_type, ours.ddl_type, ours.ddl_object, ours.rows_affected) == (
            theirs.result_type,
            theirs.ddl_type,
            theirs.ddl_object,
            theirs.rows_affected,
        )
        assert ours.to_query_result() is None and theirs.to_query_result() is None


@pytest.fixture(scope="module")
def meta() -> Iterator[tuple[Any, Any]]:
    """A cluster and a native instance that see exactly the same statements."""
    ours = laminardb.open(":memory:", workers=2)
    theirs = native.open(":memory:")
    yield ours, theirs
    theirs.close()
    ours.close()


@pytest.mark.parametrize(
    "stmt",
    [
        "SHOW SOURCES",
        "SHOW STREAMS",
        "SHOW SINKS",
        "SHOW TABLES",
        "SHOW MATERIALIZED VIEWS",
        "DESCRIBE",
    ],
)
def test_metadata_statements_like_native(meta: tuple[Any, Any], stmt: str) -> None:
    db, nat = meta
    name = fresh("meta")
    for conn in meta:
        conn.execute(
            f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, "
            "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
        )
        conn.execute(f"CREATE STREAM {name}_s AS SELECT device, ts FROM {name} WHERE ts > 0")
        conn.execute(f"CREATE SINK {name}_k FROM {name}_s")
    sql = f"DESCRIBE {name}" if stmt == "DESCRIBE" else stmt
    ours, theirs = db.execute(sql), nat.execute(sql)
    assert ours.result_type == theirs.result_type == "metadata"
    assert repr(ours) == repr(theirs)
    q_ours, q_theirs = ours.to_query_result(), theirs.to_query_result()
    assert q_ours.schema == q_theirs.schema
    assert sorted(map(repr, q_ours.fetchall())) == sorted(map(repr, q_theirs.fetchall()))
    via_sql = db.sql(sql)
    assert repr(via_sql) == repr(nat.sql(sql))
    assert sorted(map(repr, via_sql.fetchall())) == sorted(map(repr, nat.sql(sql).fetchall()))
    assert "__ldb_" not in repr(q_ours.fetchall())


def test_sql_on_ddl_raises_query_error_like_native(db2: Any, nat: Any) -> None:
    name = fresh("sqlddl")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (a BIGINT)")
    for sql in (
        f"CREATE SOURCE {name}_new (a BIGINT)",
        f"DROP SOURCE IF EXISTS {name}_never",
        f"INSERT INTO {name} VALUES (1)",
        f"ALTER SOURCE {name} ADD COLUMN b VARCHAR",
    ):
        ours = outcome(lambda sql=sql: db2.sql(sql))
        theirs = outcome(lambda sql=sql: nat.sql(sql))
        assert ours[0] == theirs[0] == "QueryError", (sql, ours, theirs)
        assert ours == theirs
    # ... after running it, as native does
    assert f"{name}_new" in db2.list_tables()
    rows_equal(db2, nat, f"SELECT * FROM {name}")


def test_explain_returns_a_plan_table(db2: Any, nat: Any) -> None:
    name = fresh("explained")
    for db in (db2, nat):
        db.execute(f"CREATE SOURCE {name} (a BIGINT, b VARCHAR)")
    source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2], pa.int64()), "b": ["x", "y"]}))
    sql = f"SELECT b, count(*) FROM {name} GROUP BY b"
    ours = db2.explain(sql)
    assert isinstance(ours, pa.Table)
    assert ours.schema == pa.schema(
        [pa.field("plan_key", pa.string(), False), pa.field("plan_value", pa.string(), False)]
    )
    # Native 0.17 returns the text of an empty table of that schema.
    assert str(nat.explain(sql)) == f"pyarrow.Table\n{ours.schema.to_string()}"
    pairs = list(zip(ours.column(0).to_pylist(), ours.column(1).to_pylist(), strict=True))
    engine_pairs = nat.sql(f"EXPLAIN {sql}").fetchall()
    assert engine_pairs and pairs[len(pairs) - len(engine_pairs) :] == engine_pairs
    assert all(k and v for k, v in pairs)
    rows_equal(db2, nat, f"EXPLAIN {sql}")


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM no_such_table",
        "SELECT no_such_column FROM {t}",
        "SELECT no_such_function(a) FROM {t}",
        "SELECT a FROM {t} ORDER BY a",
        "SELEC a FROM {t}",
        "SELECT a FROM {t} WHERE",
        "SELECT variance(a) FROM {t}",
        "TRUNCATE {t}",
        "SHOW CREATE STREAM {t}",
    ],
)
def test_query_errors_like_native(db2: Any, nat: Any, template: str) -> None:
    name = "qerr_src"
    if name not in nat.list_tables():
        for db in (db2, nat):
            db.execute(f"CREATE SOURCE {name} (a BIGINT)")
        source_rows(db2, nat, name, pa.table({"a": pa.array([1, 2], pa.int64())}))
    sql = template.format(t=name)
    for method in ("sql", "execute"):
        ours = outcome(lambda m=method: getattr(db2, m)(sql))
        theirs = outcome(lambda m=method: getattr(nat, m)(sql))
        assert ours[0] == theirs[0] != "ok", (method, sql, ours, theirs)
        # Suggestions ("Did you mean 'now'?") vary from run to run in native itself.
        assert ours[1][0] == theirs[1][0]
        assert ours[1][1].split("\n")[0] == theirs[1][1].split("\n")[0]
    assert db2.sql(f"SELECT count(*) FROM {name}").fetchall() == [(2,)]


def test_unknown_table_error_has_native_class_and_code(db2: Any) -> None:
    with pytest.raises(laminardb.QueryError) as info:
        db2.sql("SELECT * FROM not_there_at_all")
    assert info.value.code == laminardb.codes.QUERY_FAILED
    assert "not_there_at_all" in str(info.value)
    with pytest.raises(laminardb.SchemaError) as schema_info:
        db2.schema("not_there_at_all")
    assert schema_info.value.code == laminardb.codes.TABLE_NOT_FOUND
