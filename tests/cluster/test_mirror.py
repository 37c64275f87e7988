"""Queries answered from the worker's mirror of its engine's batches (workers/mirror/):
whole-source aggregates (aggregates.py) and key lookups (lookups.py) give the
engine's answers, and the mirror is exactly the engine's rows whenever it is kept."""

from __future__ import annotations

import itertools
import math
from typing import Any

import laminardb_native
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import engine as engine_mod
from workers.engine import Engine
from workers.mirror import aggregates, lookups
from workers.mirror import batches as batches_mod

pytestmark = pytest.mark.timeout(120)

TYPES = {
    "TINYINT": pa.int8(),
    "SMALLINT": pa.int16(),
    "INT": pa.int32(),
    "BIGINT": pa.int64(),
    "REAL": pa.float32(),
    "DOUBLE": pa.float64(),
}


@pytest.mark.parametrize(
    ("sql", "source", "items"),
    [
        ('SELECT count(*) AS "_a0", sum(v) AS "_a1" FROM t', "t", (("count", None), ("sum", "v"))),
        (
            "select COUNT(V), Min(k), MAX(k) from T;",
            "t",
            (("count", "v"), ("min", "k"), ("max", "k")),
        ),
        ('SELECT sum("My ""Col""") FROM "Src"', "Src", (("sum", 'My "Col"'),)),
        ("  SELECT count( * ) FROM t  ", "t", (("count", None),)),
    ],
)
def test_parse_takes_whole_source_aggregates(sql: str, source: str, items: tuple[Any, ...]) -> None:
    found = aggregates.parse(sql)
    assert found is not None
    assert (found.source, found.items) == (source, items)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM t WHERE v > 0",
        "SELECT g, count(*) FROM t GROUP BY g",
        "SELECT count(DISTINCT v) FROM t",
        "SELECT sum(*) FROM t",
        "SELECT sum(v + 1) FROM t",
        "SELECT avg(v) FROM t",
        "SELECT sum(t.v) FROM t",
        "SELECT count(*) FROM t, u",
        "SELECT count(*) FROM t AS x",
        "SELECT count(*) FROM (SELECT * FROM t)",
        "SELECT count(*), v FROM t",
        "SELECT count(*) FROM t LIMIT 1",
        "SELECT count(*) FROM t; DROP SOURCE t",
    ],
)
def test_parse_leaves_everything_else_to_the_engine(sql: str) -> None:
    assert aggregates.parse(sql) is None


def _column(kind: str) -> st.SearchStrategy[Any]:
    if kind in ("REAL", "DOUBLE"):
        width = 32 if kind == "REAL" else 64
        values = st.floats(width=width, allow_nan=False, allow_infinity=False) | st.sampled_from(
            [0.0, -0.0, 1.5, -2.25]
        )
        return st.none() | values
    bits = {"TINYINT": 8, "SMALLINT": 16, "INT": 32, "BIGINT": 64}[kind]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.none() | st.integers(low, high) | st.sampled_from([low, high])


@st.composite
def cases(draw: Any) -> tuple[list[str], list[list[Any]], list[int], list[tuple[str, str | None]]]:
    kinds = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=4))
    rows = draw(st.integers(0, 40))
    columns = [draw(st.lists(_column(k), min_size=rows, max_size=rows)) for k in kinds]
    cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=4)))
    items = draw(
        st.lists(
            st.sampled_from(["count", "sum", "min", "max"]).flatmap(
                lambda f: st.tuples(
                    st.just(f), st.sampled_from([f"c{i}" for i in range(len(kinds))])
                )
            )
            | st.just(("count", None)),
            min_size=1,
            max_size=6,
        )
    )
    return kinds, columns, cuts, items


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_answers_equal_the_engines(case: Any) -> None:
    """Any mix of the aggregates over any rows and batching: the engine's answer (int sums
    wrapping, NULL over no value), or None where the engine must answer (float min/max)."""
    kinds, columns, cuts, items = case
    names = [f"c{i}" for i in range(len(kinds))]
    table = pa.table(
        [pa.array(c, TYPES[k]) for c, k in zip(columns, kinds, strict=True)], names=names
    )
    bounds = [0, *cuts, table.num_rows]
    batches = [b for a, z in itertools.pairwise(bounds) for b in table.slice(a, z - a).to_batches()]
    selects = ", ".join(f"{f}({c or '*'}) AS a{i}" for i, (f, c) in enumerate(items))
    sql = f"SELECT {selects} FROM t"
    conn = laminardb_native.open(":memory:")
    try:
        conn.execute(
            f"CREATE SOURCE t ({', '.join(f'{n} {k}' for n, k in zip(names, kinds, strict=True))})"
        )
        for batch in batches:
            if batch.num_rows:
                conn.insert("t", batch)
        expected = conn.sql(sql).to_arrow()
    finally:
        conn.close()
    aggregate = aggregates.parse(sql)
    assert aggregate is not None
    mine = aggregates.evaluate(aggregate, [b for b in batches if b.num_rows], expected.schema)
    floats = {n for n, k in zip(names, kinds, strict=True) if k in ("REAL", "DOUBLE")}
    if any(f in ("min", "max") and c in floats for f, c in items) and table.num_rows:
        assert mine is None
        return
    assert mine is not None
    assert mine.schema == expected.schema
    for x, y in zip(mine.to_pylist()[0].values(), expected.to_pylist()[0].values(), strict=True):
        assert _same(x, y), (x, y, sql)
    assert aggregates.agrees(mine, expected)


def test_a_disagreement_is_seen() -> None:
    schema = pa.schema([pa.field("n", pa.int64(), False), pa.field("s", pa.float64())])
    one = pa.table({"n": [3], "s": [1.0]}, schema=schema)
    assert aggregates.agrees(one, one)
    assert not aggregates.agrees(one, pa.table({"n": [4], "s": [1.0]}, schema=schema))
    assert not aggregates.agrees(one, pa.table({"n": [3], "s": [1.001]}, schema=schema))
    assert not aggregates.agrees(one, one.cast(pa.schema([("n", pa.int64()), ("s", pa.float64())])))


@pytest.mark.parametrize(
    ("sql", "columns", "key", "values"),
    [
        ("SELECT * FROM t WHERE id = 424242", None, "id", (424242,)),
        ('select A, "B c" from T where ID in (1, -2 , 3);', ("a", "B c"), "id", (1, -2, 3)),
        ("SELECT * FROM t WHERE s = 'it''s, 1'", None, "s", ("it's, 1",)),
        ("SELECT * FROM t WHERE s IN ('a', 'b')", None, "s", ("a", "b")),
    ],
)
def test_parse_takes_key_lookups(
    sql: str, columns: tuple[str, ...] | None, key: str, values: tuple[Any, ...]
) -> None:
    found = lookups.parse(sql)
    assert found is not None
    assert (found.source, found.columns, found.key, found.values) == ("t", columns, key, values)


def test_lookups_of_one_shape_share_it() -> None:
    one, other = (
        lookups.parse("SELECT * FROM t WHERE id = 1"),
        lookups.parse("SELECT * FROM t WHERE id = 22"),
    )
    assert one is not None and other is not None and one.shape == other.shape
    many = lookups.parse("SELECT * FROM t WHERE id IN (1, 2)")
    assert many is not None and many.shape != one.shape


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t WHERE id > 1",
        "SELECT * FROM t WHERE id = 1 AND v = 2",
        "SELECT * FROM t WHERE id = 1 OR id = 2",
        "SELECT * FROM t WHERE id = 1 LIMIT 1",
        "SELECT * FROM t WHERE id = 1 ORDER BY v",
        "SELECT v + 1 FROM t WHERE id = 1",
        "SELECT v AS w FROM t WHERE id = 1",
        "SELECT * FROM t WHERE id = 1.5",
        "SELECT * FROM t WHERE id = - 1",
        "SELECT * FROM t WHERE id = x",
        "SELECT * FROM t WHERE id NOT IN (1)",
        "SELECT * FROM t WHERE lower(s) = 'a'",
        "SELECT DISTINCT * FROM t WHERE id = 1",
        "SELECT * FROM t, u WHERE id = 1",
    ],
)
def test_parse_leaves_other_filters_to_the_engine(sql: str) -> None:
    assert lookups.parse(sql) is None


KEY_TYPES = {"TINYINT": pa.int8(), "INT": pa.int32(), "BIGINT": pa.int64(), "VARCHAR": pa.string()}


@settings(max_examples=120, deadline=None)
@given(
    kind=st.sampled_from(sorted(KEY_TYPES)),
    keys=st.lists(st.none() | st.integers(-3, 3), max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=3),
    wanted=st.lists(st.integers(-300, 300) | st.integers(-3, 3), min_size=1, max_size=3),
    quoted=st.booleans(),
    star=st.booleans(),
)
def test_lookups_equal_the_engines(
    kind: str, keys: list[int | None], cuts: list[int], wanted: list[int], quoted: bool, star: bool
) -> None:
    """Any key column, NULLs, batching and literals (some out of the column's range, some
    of another type): the engine's rows, or None where the engine must answer."""
    text = kind == "VARCHAR"
    column = pa.array(
        [None if k is None else (f"k{k}" if text else k) for k in keys], KEY_TYPES[kind]
    )
    table = pa.table({"k": column, "v": pa.array(range(len(keys)), pa.float64())})
    bounds = [0, *sorted(c for c in cuts if c <= len(keys)), len(keys)]
    batches = [
        b
        for a, z in itertools.pairwise(bounds)
        for b in table.slice(a, z - a).to_batches()
        if b.num_rows
    ]
    literals = [f"'k{w}'" if quoted else str(w) for w in wanted]  # of the column's type or not
    where = f"k = {literals[0]}" if len(literals) == 1 else f"k IN ({', '.join(literals)})"
    sql = f"SELECT {'*' if star else 'v, k'} FROM t WHERE {where}"
    conn = laminardb_native.open(":memory:")
    try:
        conn.execute(f"CREATE SOURCE t (k {kind}, v DOUBLE)")
        for batch in batches:
            conn.insert("t", batch)
        try:
            expected = conn.sql(sql).to_arrow()
        except Exception:
            expected = None  # a comparison the engine refuses: the mirror must not answer
    finally:
        conn.close()
    plan = lookups.parse(sql)
    assert plan is not None
    schema = expected.schema if expected is not None else pa.schema([("k", KEY_TYPES[kind])])
    mine = plan.evaluate(batches, schema)
    bits = {"TINYINT": 8, "INT": 32, "BIGINT": 64}.get(kind, 0)
    fits = text or all(-(2 ** (bits - 1)) <= w < 2 ** (bits - 1) for w in wanted)
    if expected is None or text != quoted or not fits or not batches:
        assert mine is None  # the engine answers (or refuses)
        return
    assert mine is not None
    assert mine.schema == expected.schema
    assert _rows(mine) == _rows(expected)


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(map(str, r.values())) for r in table.to_pylist())


def _assert_mirror_exact(e: Engine) -> None:
    """Every source the mirror keeps holds exactly the engine's rows."""
    for name, batches in e.mirror.batches.items():
        if batches is None:
            continue
        engine_rows = e.query(f"SELECT * FROM {name}")
        mirrored = pa.Table.from_batches(batches, schema=engine_rows.schema)
        assert _rows(mirrored) == _rows(engine_rows), name


def _ints(n: int, start: int = 0) -> pa.Table:
    return pa.table({"a": pa.array(range(start, start + n), pa.int64())})


def test_the_mirror_follows_every_change_of_the_engine(monkeypatch: Any) -> None:
    """Inserts, compactions, a rebuild, ALTER, streams and DROP: where the mirror is kept it
    is the engine's rows, and aggregates are answered from it once the engine agreed."""
    monkeypatch.setattr(engine_mod, "COMPACT_AFTER", 5)
    e = Engine(threads=2)
    sql = 'SELECT count(*) AS "_a0", sum(a) AS "_a1", max(a) AS "_a2" FROM t'
    try:
        e.execute("CREATE SOURCE t (a BIGINT)", "CREATE_SOURCE", "t")
        e.execute("CREATE SOURCE u (a BIGINT)", "CREATE_SOURCE", "u")
        assert e.mirror.batches == {"t": [], "u": []}
        for i in range(12):  # compacts `t` more than once
            e.insert("t", _ints(7, i * 7))
            e.insert("u", _ints(3))
            _assert_mirror_exact(e)
        assert e.query_checked(sql).to_pylist() == [{"_a0": 84, "_a1": sum(range(84)), "_a2": 83}]
        assert e.mirror.answers == 0  # the first answer is the engine's, and teaches the schema
        assert e.query_checked(sql).equals(e.query(sql))
        assert e.mirror.answers == 1
        e.insert("t", _ints(1, 1000))
        assert e.query_checked(sql).to_pylist() == [
            {"_a0": 85, "_a1": sum(range(84)) + 1000, "_a2": 1000}
        ]
        assert e.mirror.answers == 2

        e.rebuild()
        _assert_mirror_exact(e)
        e.insert("t", _ints(2, 5000))
        _assert_mirror_exact(e)
        assert e.query_checked(sql).equals(e.query(sql))
        assert e.mirror.answers == 3

        e.execute("ALTER SOURCE t ADD COLUMN z INT", "ALTER", "t")
        assert e.mirror.batches["t"] is None
        assert e.query_checked(sql).equals(e.query(sql))
        assert e.mirror.answers == 3

        e.execute("DROP SOURCE u", "DROP", "u")
        assert "u" not in e.mirror.batches
        e.execute("CREATE SOURCE u (a BIGINT)", "CREATE_SOURCE", "u")
        e.insert("u", _ints(4))
        _assert_mirror_exact(e)
        assert e.mirror.batches["u"] is not None

        # The engine links a stream to every source (its topology): none is mirrored then.
        e.execute("CREATE STREAM s AS SELECT a FROM u", "CREATE_STREAM", "s")
        assert "u" in e.streamed
        assert all(e.mirror.batches[name] is None for name in e.streamed & e.sources.keys())
        e.start()
        e.insert("u", _ints(2))
        u_sql = "SELECT count(*) AS n FROM u"
        assert e.query_checked(u_sql).equals(e.query(u_sql))
        assert e.query_checked(u_sql).to_pylist() == [{"n": 6}]
        assert e.mirror.answers == 3
    finally:
        e.close()


def test_a_source_made_again_with_other_types_is_learnt_again() -> None:
    """A shape learnt over a DOUBLE column answers with the new types once the source is
    dropped and made again with a BIGINT one (and once altered, by the engine)."""
    e = Engine()
    sums = 'SELECT count(*) AS "_a0", sum(v) AS "_a1" FROM t'
    lookup_sql = "SELECT * FROM t WHERE k = 1"
    try:
        for ddl, v in (
            ("CREATE SOURCE t (k BIGINT, v DOUBLE)", pa.float64()),
            ("CREATE SOURCE t (k BIGINT, v BIGINT)", pa.int64()),
        ):
            e.execute("DROP SOURCE IF EXISTS t", "DROP", "t")
            e.execute(ddl, "CREATE_SOURCE", "t")
            e.insert("t", pa.table({"k": pa.array([1, 2], pa.int64()), "v": pa.array([3, 4], v)}))
            for _ in range(2):  # the engine's answer, then the mirror's
                for sql in (sums, lookup_sql):
                    assert e.query_checked(sql).equals(e.query(sql)), (ddl, sql)
        assert e.mirror.answers == 4
        e.execute("CREATE OR REPLACE SOURCE t (k VARCHAR, v DOUBLE)", "CREATE_SOURCE", "t")
        e.insert("t", pa.table({"k": pa.array(["1"]), "v": pa.array([7.5])}))
        for _ in range(2):
            assert e.query_checked(sums).equals(e.query(sums))
        assert e.query_checked(sums).to_pylist() == [{"_a0": 1, "_a1": 7.5}]
    finally:
        e.close()


@pytest.mark.parametrize(
    ("ddl", "mirrored"),
    [
        ("CREATE SOURCE t (k BIGINT, v DOUBLE)", True),
        ("CREATE SOURCE t (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);", True),
        ("CREATE SOURCE t (\"a)b\" BIGINT, s VARCHAR DEFAULT ')')", True),
        ("CREATE SOURCE t (k BIGINT) WITH (connector = 'kafka', topic = 'x')", False),
        ("CREATE SOURCE t (k BIGINT) FROM KAFKA (topic = 'x')", False),
        ("CREATE SOURCE t (k BIGINT) WITH (buffer_size = 1024)", False),
    ],
)
def test_only_sources_fed_by_inserts_are_mirrored(ddl: str, mirrored: bool) -> None:
    """A connector may feed a source rows the worker never inserted."""
    assert batches_mod.inserts_only(ddl) is mirrored


def test_a_source_a_connector_feeds_is_left_to_the_engine() -> None:
    e = Engine()
    try:
        ddl = "CREATE SOURCE t (k BIGINT) FROM KAFKA (topic = 'x')"
        e.execute(ddl, "CREATE_SOURCE", "t")
        e.insert("t", _ints(3).rename_columns(["k"]))
        assert e.mirror.batches["t"] is None
        e._compact("t", e.sources["t"])  # (a rebuild starts the connector: not here)
        assert e.mirror.batches["t"] is None
    finally:
        e.close()


def test_a_query_the_engine_answers_otherwise_stays_with_the_engine() -> None:
    """Were the mirror ever to disagree with the engine, the engine's answer wins, now and
    for every later run of that SQL."""
    e = Engine()
    sql = "SELECT count(*) AS n FROM t"
    try:
        e.execute("CREATE SOURCE t (a BIGINT)", "CREATE_SOURCE", "t")
        e.insert("t", _ints(10))
        mirrored = e.mirror.batches["t"]
        assert mirrored is not None
        mirrored.append(pa.record_batch({"a": pa.array([1], pa.int64())}))  # a forged row
        assert e.query_checked(sql).to_pylist() == [{"n": 10}]
        assert e.query_checked(sql).to_pylist() == [{"n": 10}]
        assert e.mirror.answers == 0
    finally:
        e.close()


def test_the_cluster_answers_from_the_mirror_as_native_does() -> None:
    """End to end: two workers answer a global count/sum from their mirrors, equal to one
    native instance, and stop once a stream reads the source."""
    import laminardb

    schema = pa.schema([("k", pa.int64()), ("v", pa.float64()), ("g", pa.int32())])
    rows = pa.Table.from_pylist([{"k": i, "v": i * 0.5, "g": i % 3} for i in range(2000)], schema)
    native = laminardb_native.open(":memory:")
    db = laminardb.open(":memory:", workers=2)
    sql = "SELECT count(*), sum(v), min(k), max(g), count(v) FROM t"
    try:
        for conn in (native, db):
            conn.execute(
                "CREATE SOURCE t (k BIGINT, v DOUBLE, g INT)"
                + (" PARTITION BY (k)" if conn is db else "")
            )
            conn.insert("t", rows.slice(0, 1500))
            conn.insert("t", rows.slice(1500))
        for _ in range(3):
            assert db.sql(sql).to_arrow().equals(native.sql(sql).to_arrow())
        assert sum(s["mirror_answers"] for s in db._broadcast_call("stats", [])) >= 4
        lookups = [f"SELECT * FROM t WHERE k = {k}" for k in (5, 1999, 77, -1)]
        lookups.append("SELECT v, g FROM t WHERE k IN (3, 1500, 4000)")
        before = sum(s["mirror_answers"] for s in db._broadcast_call("stats", []))
        for lookup_sql in lookups * 2:  # each worker learns each shape from its engine once
            mine, theirs = db.sql(lookup_sql).to_arrow(), native.sql(lookup_sql).to_arrow()
            assert mine.schema == theirs.schema
            assert _rows(mine) == _rows(theirs)  # no order asked: two workers, two parts
        assert sum(s["mirror_answers"] for s in db._broadcast_call("stats", [])) >= before + len(
            lookups
        )
        db.execute("CREATE STREAM s AS SELECT k, v FROM t")
        native.execute("CREATE STREAM s AS SELECT k, v FROM t")
        before = sum(s["mirror_answers"] for s in db._broadcast_call("stats", []))
        for conn in (native, db):
            conn.insert("t", rows.slice(0, 10))
        assert db.sql(sql).to_arrow().equals(native.sql(sql).to_arrow())
        assert sum(s["mirror_answers"] for s in db._broadcast_call("stats", [])) == before
    finally:
        db.close()
        native.close()
