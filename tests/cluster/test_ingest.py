"""Ingestion into a running cluster: every input kind, key routing, volume, bad input.

Answers are compared with one `laminardb_native` instance fed the same rows (as exactly typed
Arrow, the only input native does not poison); placement is read from
`Connection.workers()[i].rows_ingested` (rows shipped to each worker) after a flush.
"""

from __future__ import annotations

import datetime
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import laminardb_native as native
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import laminardb

pytestmark = pytest.mark.timeout(120)

_ids = itertools.count()


def fresh(prefix: str) -> str:
    """A source name no other test of this module uses."""
    return f"{prefix}_{next(_ids)}"


SCHEMA = pa.schema(
    [
        ("ts", pa.int64()),
        ("device", pa.string()),
        ("value", pa.float64()),
        ("ok", pa.bool_()),
        ("at", pa.timestamp("us")),
    ]
)
COLUMNS_SQL = "ts BIGINT, device VARCHAR, value DOUBLE, ok BOOLEAN, at TIMESTAMP"
ROWS: list[dict[str, Any]] = [
    {"ts": 1, "device": "a", "value": 1.5, "ok": True, "at": datetime.datetime(2024, 1, 1, 12)},
    {"ts": 2, "device": "b", "value": None, "ok": False, "at": datetime.datetime(2024, 1, 2)},
    {"ts": 3, "device": None, "value": -3.25, "ok": True, "at": None},
    {"ts": 4, "device": "a", "value": 4.0, "ok": None, "at": datetime.datetime(2024, 1, 3, 1)},
    {"ts": 5, "device": "zz", "value": 0.0, "ok": False, "at": datetime.datetime(2023, 5, 6)},
]
TABLE = pa.Table.from_pylist(ROWS, schema=SCHEMA)


class ArrowStreamOnly:
    """Exposes nothing but the Arrow C stream interface (like a third-party frame library)."""

    def __init__(self, table: pa.Table):
        self._table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self._table.__arrow_c_stream__(requested_schema)


def _input(kind: str) -> object:
    if kind == "list_of_dicts":
        return [dict(r) for r in ROWS]
    if kind == "dict_of_lists":
        return {c: [r[c] for r in ROWS] for c in SCHEMA.names}
    if kind == "pandas":
        return pd.DataFrame(ROWS)
    if kind == "polars":
        return pl.DataFrame(ROWS)
    if kind == "table":
        return TABLE
    if kind == "record_batch":
        return TABLE.to_batches()[0]
    if kind == "reader":
        return pa.RecordBatchReader.from_batches(SCHEMA, TABLE.to_batches(max_chunksize=2))
    if kind == "arrow_c_stream":
        return ArrowStreamOnly(TABLE)
    raise AssertionError(kind)


INPUT_KINDS = [
    "list_of_dicts",
    "dict_of_lists",
    "pandas",
    "polars",
    "table",
    "record_batch",
    "reader",
    "arrow_c_stream",
]


def bag(rows: list[tuple[Any, ...]]) -> Counter[tuple[Any, ...]]:
    return Counter(rows)


def native_answer(ddl: str, name: str, data: pa.Table, sql: str) -> list[tuple[Any, ...]]:
    """`sql` on one native instance holding `data` (exactly typed Arrow) in source `name`."""
    n = native.open(":memory:")
    try:
        n.execute(ddl)
        if data.num_rows:
            n.insert(name, data)
        return n.sql(sql).fetchall()  # type: ignore[no-any-return]
    finally:
        n.close()


def labels(prefix: str, codes: np.ndarray, distinct: int) -> pa.Array:
    """Strings `prefix<code>` for integer codes, built fast (dictionary decode)."""
    words = pa.array([f"{prefix}{i}" for i in range(distinct)])
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int32)), words
    ).dictionary_decode()


def count(db: Any, name: str) -> int:
    return int(db.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0])


def shipped(db: Any) -> list[int]:
    """Rows each worker has been sent, after shipping everything buffered (a query flushes)."""
    db.sql("SELECT 1").fetchall()
    return [w.rows_ingested for w in db.workers()]


def delta(before: list[int], after: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


def placed(db: Any, insert: Callable[[], object]) -> list[int]:
    """Rows that `insert()` put on each worker."""
    before = shipped(db)
    insert()
    return delta(before, shipped(db))


@pytest.fixture(scope="module")
def db3() -> Iterator[Any]:
    conn = laminardb.open(":memory:", workers=3)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def small_arena() -> Iterator[Any]:
    """Two workers whose transfer arena (1 MiB) is far smaller than a big insert."""
    conn = laminardb.open(":memory:", workers=2, arena_bytes=1 << 20)
    yield conn
    conn.close()


# ---------------------------------------------------------------------------------------------
# Input kinds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("keyed", [False, True], ids=["round_robin", "keyed"])
def test_every_input_kind_arrives_exactly(db2: Any, kind: str, keyed: bool) -> None:
    name = fresh(f"kind_{kind}")
    ddl = f"CREATE SOURCE {name} ({COLUMNS_SQL})"
    db2.execute(ddl + (" PARTITION BY (device)" if keyed else ""))
    assert db2.insert(name, _input(kind)) == len(ROWS)
    sql = f"SELECT ts, device, value, ok, at FROM {name}"
    ours = db2.sql(sql)
    assert ours.schema == native_schema(ddl, name, sql)
    assert bag(ours.fetchall()) == bag(native_answer(ddl, name, TABLE, sql))


def native_schema(ddl: str, name: str, sql: str) -> pa.Schema:
    n = native.open(":memory:")
    try:
        n.execute(ddl)
        n.insert(name, TABLE)
        return n.sql(sql).schema  # type: ignore[no-any-return]
    finally:
        n.close()


def test_pandas_index_and_large_strings(db2: Any) -> None:
    """pandas 3 strings (`large_string`) and a named index column, which poison native."""
    name = fresh("pandas_idx")
    db2.execute(f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR) PARTITION BY (device)")
    frame = pd.DataFrame({"device": ["x", "y", "x"]}, index=pd.Index([10, 20, 30], name="ts"))
    assert db2.insert(name, frame) == 3
    assert bag(db2.sql(f"SELECT ts, device FROM {name}").fetchall()) == bag(
        [(10, "x"), (20, "y"), (30, "x")]
    )


@pytest.mark.parametrize("shape", ["array", "ndjson", "one_object"])
def test_insert_json(db2: Any, shape: str) -> None:
    name = fresh(f"json_{shape}")
    db2.execute(
        f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE) PARTITION BY (device)"
    )
    records = [
        {"value": 1.5, "ts": 1, "device": "a"},
        {"ts": 2, "device": None, "value": 2},
        {"ts": 3, "device": "c"},
    ]
    if shape == "array":
        import json

        text = json.dumps(records)
    elif shape == "ndjson":
        import json

        text = "\n".join(json.dumps(r) for r in records) + "\n\n"
    else:
        records = records[:1]
        text = '{"value": 1.5, "ts": 1, "device": "a"}'
    assert db2.insert_json(name, text) == len(records)
    expected = [
        (r["ts"], r["device"], None if "value" not in r else float(r["value"])) for r in records
    ]
    assert bag(db2.sql(f"SELECT ts, device, value FROM {name}").fetchall()) == bag(expected)


def test_insert_csv_matches_native_insert_csv(db2: Any) -> None:
    name = fresh("csv")
    ddl = f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE)"
    text = "ts,device,value\n1,a,1.5\n2,b,2.25\n3,,\n4,a,-1.0\n"
    db2.execute(ddl + " PARTITION BY (ts)")
    assert db2.insert_csv(name, text) == 4
    n = native.open(":memory:")
    try:
        n.execute(ddl)
        assert n.insert_csv(name, text) == 4
        theirs = n.sql(f"SELECT * FROM {name}").fetchall()
    finally:
        n.close()
    assert bag(db2.sql(f"SELECT * FROM {name}").fetchall()) == bag(theirs)


def test_csv_columns_in_another_order(db2: Any) -> None:
    name = fresh("csv_order")
    db2.execute(f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE)")
    assert db2.insert_csv(name, "value,ts,device\n1.5,1,a\n2.5,2,b\n") == 2
    assert bag(db2.sql(f"SELECT ts, device, value FROM {name}").fetchall()) == bag(
        [(1, "a", 1.5), (2, "b", 2.5)]
    )


def test_zero_row_arrow_input_returns_zero(db2: Any) -> None:
    name = fresh("zero")
    db2.execute(f"CREATE SOURCE {name} ({COLUMNS_SQL}) PARTITION BY (device)")
    db2.insert(name, TABLE)
    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {name} ({COLUMNS_SQL})")
        assert n.insert(name, SCHEMA.empty_table()) == 0
    finally:
        n.close()
    assert db2.insert(name, SCHEMA.empty_table()) == 0
    assert db2.insert(name, pa.RecordBatch.from_pylist([], schema=SCHEMA)) == 0
    assert count(db2, name) == len(ROWS)


# ---------------------------------------------------------------------------------------------
# Key routing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["db2", "db3"])
def test_every_row_of_a_key_lands_on_one_worker(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    db = request.getfixturevalue(fixture)
    name = fresh("keyed")
    db.execute(
        f"CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE) PARTITION BY (device)"
    )
    home: dict[str, int] = {}
    for key in [f"dev-{i}" for i in range(12)]:
        for call in range(3):  # separate calls, separately shipped: the same worker every time
            rows = {
                "ts": [call * 10 + j for j in range(5)],
                "device": [key] * 5,
                "value": [1.0] * 5,
            }
            where = placed(db, lambda rows=rows: db.insert(name, rows))
            assert sum(where) == 5
            assert sorted(where) == [0] * (len(where) - 1) + [5], (key, where)
            worker = where.index(5)
            assert home.setdefault(key, worker) == worker, f"key {key} moved between workers"
    assert len(set(home.values())) > 1, f"12 keys all on one worker: {home}"
    # The same rows mixed in one call go to the same homes.
    mixed = {
        "ts": list(range(24)),
        "device": [f"dev-{i % 12}" for i in range(24)],
        "value": [2.0] * 24,
    }
    where = placed(db, lambda: db.insert(name, mixed))
    expected = [0] * len(db.workers())
    for key in mixed["device"]:
        expected[home[key]] += 1
    assert where == expected
    assert db.sql(f"SELECT count(*), count(DISTINCT device) FROM {name}").fetchall() == [
        (12 * 15 + 24, 12)
    ]


def test_key_placement_is_the_same_in_another_cluster(db2: Any, small_arena: Any) -> None:
    """The hash is stable across processes and runs (never Python's salted hash())."""
    homes = []
    for db in (db2, small_arena):
        name = fresh("stable")
        db.execute(f"CREATE SOURCE {name} (k VARCHAR, n BIGINT) PARTITION BY (k)")
        homes.append(
            [
                placed(db, lambda db=db, name=name, k=k: db.insert(name, {"k": [k], "n": [1]}))
                for k in "abcdefghij"
            ]
        )
    assert homes[0] == homes[1]


def test_round_robin_spreads_separate_inserts(db2: Any) -> None:
    name = fresh("rr")
    db2.execute(f"CREATE SOURCE {name} (id BIGINT, v DOUBLE)")
    total = [0, 0]
    for i in range(6):
        where = placed(
            db2,
            lambda i=i: db2.insert(name, {"id": [i * 10 + j for j in range(10)], "v": [0.5] * 10}),
        )
        assert sum(where) == 10 and sorted(where) == [0, 10], where  # one batch goes whole
        total = [a + b for a, b in zip(total, where, strict=True)]
    assert all(t > 0 for t in total), f"round-robin used one worker only: {total}"
    assert db2.sql(f"SELECT count(*), count(DISTINCT id) FROM {name}").fetchall() == [(60, 60)]


def test_null_keys_go_to_one_fixed_worker(db2: Any) -> None:
    single = fresh("nullkey")
    pair = fresh("nullpair")
    db2.execute(f"CREATE SOURCE {single} (device VARCHAR, v BIGINT) PARTITION BY (device)")
    db2.execute(
        f"CREATE SOURCE {pair} (device VARCHAR, region BIGINT, v BIGINT) PARTITION BY (device, region)"
    )
    homes = set()
    for i in range(3):
        where = placed(db2, lambda i=i: db2.insert(single, {"device": [None, None], "v": [i, i]}))
        assert sorted(where) == [0, 2], where
        homes.add(where.index(2))
    for device, region in [(None, 1), ("x", None), (None, None), ("other", None)]:
        where = placed(
            db2,
            lambda d=device, r=region: db2.insert(pair, {"device": [d], "region": [r], "v": [0]}),
        )
        assert sorted(where) == [0, 1], where
        homes.add(where.index(1))
    assert len(homes) == 1, f"NULL keys went to several workers: {homes}"
    assert count(db2, single) == 6 and count(db2, pair) == 4
    assert db2.sql(f"SELECT count(*) FROM {single} WHERE device IS NULL").fetchall() == [(6,)]


def test_composite_key_routes_by_every_column(db2: Any) -> None:
    name = fresh("composite")
    db2.execute(
        f"CREATE SOURCE {name} (device VARCHAR, region BIGINT, v DOUBLE) PARTITION BY (device, region)"
    )
    workers_of_device: dict[str, set[int]] = {}
    for device in ("a", "b"):
        for region in range(10):
            home = None
            for call in range(2):
                rows = {"device": [device] * 3, "region": [region] * 3, "v": [float(call)] * 3}
                where = placed(db2, lambda rows=rows: db2.insert(name, rows))
                assert sorted(where) == [0, 3], where
                assert home in (None, where.index(3))
                home = where.index(3)
            workers_of_device.setdefault(device, set()).add(home)  # type: ignore[arg-type]
    # With 10 regions per device, a device whose pairs all share one worker means the key
    # ignored `region`.
    assert any(len(w) == 2 for w in workers_of_device.values()), workers_of_device
    ddl = "CREATE SOURCE c (device VARCHAR, region BIGINT, v DOUBLE)"
    sql = f"SELECT device, region, count(*), sum(v) FROM {name} GROUP BY device, region"
    data = pa.table(
        {
            "device": [
                d for d in ("a", "b") for r in range(10) for c in range(2) for _ in range(3)
            ],
            "region": pa.array(
                [r for d in ("a", "b") for r in range(10) for c in range(2) for _ in range(3)],
                pa.int64(),
            ),
            "v": [
                float(c) for d in ("a", "b") for r in range(10) for c in range(2) for _ in range(3)
            ],
        }
    )
    assert bag(db2.sql(sql).fetchall()) == bag(
        native_answer(ddl, "c", data, sql.replace(name, "c"))
    )


def test_create_table_with_partition_by(db2: Any) -> None:
    name = fresh("created")
    schema = pa.schema([("device", pa.string()), ("region", pa.int64()), ("v", pa.float64())])
    db2.create_table(name, schema, partition_by=["device", "region"])
    assert db2.schema(name) == schema
    info = {s.name: s for s in db2.sources()}[name]
    assert info.partition_by == ["device", "region"]
    assert info.schema == schema
    home = None
    for _ in range(3):
        where = placed(
            db2, lambda: db2.insert(name, {"device": ["k", "k"], "region": [7, 7], "v": [1.0, 2.0]})
        )
        assert sorted(where) == [0, 2]
        assert home in (None, where.index(2))
        home = where.index(2)
    unkeyed = fresh("created_plain")
    db2.create_table(unkeyed, schema)
    assert {s.name: s for s in db2.sources()}[unkeyed].partition_by == []


def test_create_table_partition_by_unknown_column_creates_nothing(db2: Any) -> None:
    name = fresh("created_bad")
    with pytest.raises(laminardb.SchemaError, match="nope") as info:
        db2.create_table(name, pa.schema([("a", pa.int64())]), partition_by=["nope"])
    assert name in str(info.value)
    assert name not in db2.list_tables()
    db2.create_table(name, pa.schema([("a", pa.int64())]), partition_by=["a"])
    assert db2.insert(name, {"a": [1, 2, 3]}) == 3 and count(db2, name) == 3


def test_sources_report_partition_by(db2: Any) -> None:
    keyed, pair, plain = fresh("pk"), fresh("pk2"), fresh("pk0")
    db2.execute(f"CREATE SOURCE {keyed} (a BIGINT, b VARCHAR) PARTITION BY (b)")
    db2.execute(f"CREATE SOURCE {pair} (a BIGINT, b VARCHAR) PARTITION BY (b, a)")
    db2.execute(f"CREATE SOURCE {plain} (a BIGINT, b VARCHAR)")
    infos = {s.name: s for s in db2.sources()}
    assert infos[keyed].partition_by == ["b"]
    assert infos[pair].partition_by == ["b", "a"]
    assert infos[plain].partition_by == []
    # The clause is ours: the engines (and so the schema) never see it.
    assert db2.schema(pair) == pa.schema([("a", pa.int64()), ("b", pa.string())])


# ---------------------------------------------------------------------------------------------
# Volume: many small inserts, one huge insert, retention
# ---------------------------------------------------------------------------------------------


def test_3000_single_row_inserts_arrive_and_keep_at_least_what_native_keeps(db2: Any) -> None:
    """Native blocks at the 2048th unconsumed insert and keeps only the last 2048 inserts."""
    name = fresh("small_inserts")
    db2.execute(f"CREATE SOURCE {name} (id BIGINT, device VARCHAR) PARTITION BY (device)")
    before = sum(shipped(db2))
    for i in range(3000):
        assert db2.insert(name, {"id": i, "device": f"d{i % 7}"}) == 1
    assert db2.sql(
        f"SELECT count(*), min(id), max(id), count(DISTINCT id) FROM {name}"
    ).fetchall() == [(3000, 0, 2999, 3000)]
    assert sum(shipped(db2)) - before == 3000

    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {name} (id BIGINT, device VARCHAR)")
        n.execute(f"CREATE STREAM drain_{name} AS SELECT id FROM {name} WHERE false")
        n.start()  # a running consumer: without one native would hang here
        for i in range(3000):
            n.insert(name, {"id": i, "device": f"d{i % 7}"})
        kept_by_native = {r[0] for r in n.sql(f"SELECT id FROM {name}").fetchall()}
    finally:
        n.close()
    assert len(kept_by_native) == 2048
    kept = {r[0] for r in db2.sql(f"SELECT id FROM {name}").fetchall()}
    assert kept >= kept_by_native


def test_3000_writer_inserts_do_not_hang(db2: Any) -> None:
    name = fresh("writer_many")
    db2.execute(f"CREATE SOURCE {name} (id BIGINT)")
    with db2.writer(name) as w:
        for i in range(3000):
            w.insert({"id": i})
    assert db2.sql(f"SELECT count(*), sum(id) FROM {name}").fetchall() == [(3000, sum(range(3000)))]


def test_insert_larger_than_the_arena_arrives_complete(small_arena: Any) -> None:
    db = small_arena
    name = fresh("big")
    db.execute(f"CREATE SOURCE {name} (id BIGINT, v DOUBLE, tag VARCHAR)")
    n = 3_000_000
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "v": ids.astype(np.float64) * 0.5,
            "tag": labels("t", ids % 97, 97),
        }
    )
    assert table.nbytes > 20 * (1 << 20)  # many arenas' worth
    before = shipped(db)
    assert db.insert(name, table) == n
    got = db.sql(
        f"SELECT count(*), count(DISTINCT id), sum(id), min(id), max(id), sum(v), count(DISTINCT tag) FROM {name}"
    ).fetchall()
    assert got == [(n, n, int(ids.sum()), 0, n - 1, float(ids.sum()) * 0.5, 97)]
    where = delta(before, shipped(db))
    assert sum(where) == n and all(w > 0 for w in where), where


def test_large_keyed_insert_is_split_by_key(small_arena: Any) -> None:
    db = small_arena
    name = fresh("bigkeyed")
    db.execute(f"CREATE SOURCE {name} (id BIGINT, k VARCHAR) PARTITION BY (k)")
    n = 400_000
    ids = np.arange(n, dtype=np.int64)
    keys = labels("key-", ids % 1000, 1000)
    assert db.insert(name, pa.table({"id": ids, "k": keys})) == n
    sql = f"SELECT k, count(*), sum(id) FROM {name} GROUP BY k"
    ours = db.sql(sql).fetchall()
    assert len(ours) == 1000
    theirs = native_answer(
        "CREATE SOURCE b (id BIGINT, k VARCHAR)",
        "b",
        pa.table({"id": ids, "k": keys}),
        sql.replace(name, "b"),
    )
    assert bag(ours) == bag(theirs)


# ---------------------------------------------------------------------------------------------
# Bad input: native class, a message naming table and column, nothing applied, still working
# ---------------------------------------------------------------------------------------------


def rejected(
    db: Any,
    name: str,
    call: Callable[[], object],
    cls: type[BaseException],
    *fragments: str,
) -> BaseException:
    """`call` raises `cls` naming every fragment; the source is unchanged and still works."""
    rows_before = count(db, name)
    on_workers = shipped(db)
    with pytest.raises(cls) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert count(db, name) == rows_before
    assert shipped(db) == on_workers
    assert db.insert(name, _good(ts=[10_000], device=["ok"])) == 1
    assert count(db, name) == rows_before + 1
    return info.value


@pytest.fixture
def bad(db2: Any) -> str:
    """A keyed source with rows on it, for one bad-input case."""
    name = fresh("bad")
    db2.execute(
        f"CREATE SOURCE {name} (ts BIGINT NOT NULL, device VARCHAR, value DOUBLE, n INT) "
        "PARTITION BY (device)"
    )
    db2.insert(
        name, {"ts": [1, 2, 3], "device": ["a", "b", "c"], "value": [1.0, 2.0, 3.0], "n": [1, 2, 3]}
    )
    return name


def _good(**over: Any) -> dict[str, list[Any]]:
    row = {"ts": [1], "device": ["a"], "value": [1.0], "n": [1]}
    row.update(over)
    return row


def test_unknown_table_like_native(db2: Any, bad: str) -> None:
    n = native.open(":memory:")
    try:
        with pytest.raises(Exception) as theirs:
            n.insert("no_such_table", [{"a": 1}])
    finally:
        n.close()
    ours = rejected(
        db2,
        bad,
        lambda: db2.insert("no_such_table", [{"a": 1}]),
        laminardb.SchemaError,
        "no_such_table",
    )
    assert (type(ours).__name__, ours.code, str(ours)) == (  # type: ignore[attr-defined]
        type(theirs.value).__name__,
        theirs.value.code,  # type: ignore[attr-defined]
        str(theirs.value),
    )
    for method, data in (("insert_json", '[{"a": 1}]'), ("insert_csv", "a\n1\n")):
        with pytest.raises(laminardb.SchemaError, match="no_such_table") as info:
            getattr(db2, method)("no_such_table", data)
        assert info.value.code == laminardb.codes.TABLE_NOT_FOUND
    with pytest.raises(laminardb.SchemaError, match="no_such_table"):
        db2.writer("no_such_table")


def test_insert_into_a_stream_like_native(db2: Any, bad: str) -> None:
    stream = fresh("a_stream")
    db2.execute(
        f"CREATE STREAM {stream} AS SELECT device, count(*) AS n FROM {bad} GROUP BY device"
    )
    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {bad} (ts BIGINT NOT NULL, device VARCHAR, value DOUBLE, n INT)")
        n.execute(
            f"CREATE STREAM {stream} AS SELECT device, count(*) AS n FROM {bad} GROUP BY device"
        )
        with pytest.raises(Exception) as theirs:
            n.insert(stream, {"device": ["a"], "n": [1]})
    finally:
        n.close()
    ours = rejected(
        db2,
        bad,
        lambda: db2.insert(stream, {"device": ["a"], "n": [1]}),
        laminardb.SchemaError,
        stream,
    )
    assert (type(ours).__name__, str(ours)) == (type(theirs.value).__name__, str(theirs.value))
    assert ours.code == theirs.value.code == 200  # type: ignore[attr-defined]


def test_missing_column(db2: Any, bad: str) -> None:
    data = _good()
    del data["value"]
    error = rejected(db2, bad, lambda: db2.insert(bad, data), laminardb.SchemaError, bad, "value")
    assert error.code == laminardb.codes.SCHEMA_MISMATCH  # type: ignore[attr-defined]
    table = pa.table({"ts": [1], "device": ["a"], "n": pa.array([1], pa.int32())})
    rejected(db2, bad, lambda: db2.insert(bad, table), laminardb.SchemaError, bad, "value")
    rejected(
        db2,
        bad,
        lambda: db2.insert(bad, [{"ts": 1, "device": "a", "n": 1}]),
        laminardb.SchemaError,
        bad,
        "value",
    )


def test_extra_column(db2: Any, bad: str) -> None:
    rejected(
        db2, bad, lambda: db2.insert(bad, _good(extra=[5])), laminardb.SchemaError, bad, "extra"
    )
    rows = [{"ts": 1, "device": "a", "value": 1.0, "n": 1, "bogus": 2}]
    rejected(db2, bad, lambda: db2.insert(bad, rows), laminardb.SchemaError, bad, "bogus")
    rejected(
        db2,
        bad,
        lambda: db2.insert_json(bad, '{"ts": 1, "device": "a", "value": 1, "n": 1, "zz": 0}'),
        laminardb.SchemaError,
        bad,
        "zz",
    )
    rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,device,value,n,yy\n1,a,1.0,1,9\n"),
        laminardb.SchemaError,
        bad,
        "yy",
    )


def test_reordered_columns_work(db2: Any, bad: str) -> None:
    before = count(db2, bad)
    assert db2.insert(bad, {"n": [7], "value": [7.5], "device": ["r"], "ts": [70]}) == 1
    assert (
        db2.insert(
            bad,
            pa.table({"device": ["r"], "n": pa.array([8], pa.int32()), "ts": [80], "value": [8.5]}),
        )
        == 1
    )
    assert db2.insert(bad, [{"value": 9.5, "n": 9, "ts": 90, "device": "r"}]) == 1
    assert db2.insert_json(bad, '{"n": 10, "device": "r", "value": 10.5, "ts": 100}') == 1
    assert db2.insert_csv(bad, "device,n,value,ts\nr,11,11.5,110\n") == 1
    assert count(db2, bad) == before + 5
    got = db2.sql(f"SELECT ts, device, value, n FROM {bad} WHERE device = 'r'").fetchall()
    assert bag(got) == bag([(t * 10, "r", t + 0.5, t) for t in (7, 8, 9, 10, 11)])


def test_wrong_types(db2: Any, bad: str) -> None:
    rejected(db2, bad, lambda: db2.insert(bad, _good(ts=["x"])), laminardb.SchemaError, bad, "ts")
    rejected(
        db2, bad, lambda: db2.insert(bad, _good(device=[5])), laminardb.SchemaError, bad, "device"
    )
    table = pa.table(
        {"ts": pa.array(["1"]), "device": ["a"], "value": [1.0], "n": pa.array([1], pa.int32())}
    )
    rejected(db2, bad, lambda: db2.insert(bad, table), laminardb.SchemaError, bad, "ts")
    rejected(
        db2,
        bad,
        lambda: db2.insert_json(bad, '{"ts": 1, "device": "a", "value": "high", "n": 1}'),
        laminardb.SchemaError,
        bad,
        "value",
    )
    # Native accepts this `INSERT ... VALUES` and poisons the source; ours refuses it.
    rejected(
        db2,
        bad,
        lambda: db2.execute(f"INSERT INTO {bad} VALUES ('x', 'a', 1.0, 1)"),
        laminardb.SchemaError,
        bad,
        "ts",
    )


def test_values_that_do_not_cast(db2: Any, bad: str) -> None:
    rejected(
        db2, bad, lambda: db2.insert(bad, _good(ts=[1.5])), laminardb.SchemaError, bad, "ts", "1.5"
    )
    rejected(db2, bad, lambda: db2.insert(bad, _good(n=[2**40])), laminardb.SchemaError, bad, "'n'")
    rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,device,value,n\n1,a,1.0,1\nabc,b,2.0,2\n"),
        laminardb.SchemaError,
        bad,
        "ts",
        "abc",
    )
    rejected(
        db2, bad, lambda: db2.insert(bad, _good(value=["1.0"])), laminardb.SchemaError, bad, "value"
    )


def test_null_in_not_null_column(db2: Any, bad: str) -> None:
    rejected(db2, bad, lambda: db2.insert(bad, _good(ts=[None])), laminardb.SchemaError, bad, "ts")
    rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,device,value,n\n,a,1.0,1\n"),
        laminardb.SchemaError,
        bad,
        "ts",
    )
    rejected(
        db2,
        bad,
        lambda: db2.insert_json(bad, '{"ts": null, "device": "a", "value": 1.0, "n": 1}'),
        laminardb.SchemaError,
        bad,
        "ts",
    )


def test_missing_partition_key_is_an_error_and_a_null_key_is_not(db2: Any, bad: str) -> None:
    rejected(
        db2,
        bad,
        lambda: db2.insert(bad, {"ts": [1], "value": [1.0], "n": [1]}),
        laminardb.SchemaError,
        bad,
        "device",
    )
    rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,value,n\n1,1.0,1\n"),
        laminardb.SchemaError,
        bad,
        "device",
    )
    before = count(db2, bad)
    assert db2.insert(bad, _good(device=[None])) == 1
    assert db2.insert(bad, [{"ts": 1, "value": 1.0, "n": 1, "device": None}]) == 1
    assert db2.sql(f"SELECT count(*) FROM {bad} WHERE device IS NULL").fetchall() == [(2,)]
    assert count(db2, bad) == before + 2


@pytest.mark.parametrize(
    "text",
    ['{"ts": 1, "device": "a"', "[1, 2]", '{"ts": 1}\n{oops}\n', "not json at all"],
)
def test_malformed_json(db2: Any, bad: str, text: str) -> None:
    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {bad} (ts BIGINT NOT NULL, device VARCHAR, value DOUBLE, n INT)")
        try:
            n.insert_json(bad, text)
            theirs: str | None = None
        except Exception as exc:
            theirs = type(exc).__name__
    finally:
        n.close()
    error = rejected(db2, bad, lambda: db2.insert_json(bad, text), laminardb.IngestionError, bad)
    if theirs is not None:
        assert type(error).__name__ == theirs


def test_malformed_csv(db2: Any, bad: str) -> None:
    text = 'ts,device,value,n\n1,"a,1.0,1\n'
    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {bad} (ts BIGINT NOT NULL, device VARCHAR, value DOUBLE, n INT)")
        with pytest.raises(Exception) as theirs:
            n.insert_csv(bad, "ts,device,value,n\n1,a\n")
    finally:
        n.close()
    error = rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,device,value,n\n1,a\n"),
        laminardb.IngestionError,
        bad,
    )
    assert type(error).__name__ == type(theirs.value).__name__
    rejected(db2, bad, lambda: db2.insert_csv(bad, text), laminardb.IngestionError, bad)


def test_non_utf8_text(db2: Any, bad: str) -> None:
    """Text with lone surrogates cannot be UTF-8 (native: UnicodeEncodeError; ours names the table)."""
    not_utf8 = (laminardb.IngestionError, laminardb.SchemaError)
    rejected(
        db2,
        bad,
        lambda: db2.insert_csv(bad, "ts,device,value,n\n1,\udcff,1.0,1\n"),
        laminardb.IngestionError,
        bad,
    )
    rejected(
        db2,
        bad,
        lambda: db2.insert_json(bad, '{"ts": 1, "device": "\udcff", "value": 1.0, "n": 1}'),
        not_utf8,  # type: ignore[arg-type]
        bad,
    )
    for method in ("insert_csv", "insert_json"):  # bytes are not text: native's TypeError
        rejected(db2, bad, lambda m=method: getattr(db2, m)(bad, b"ts\n\xff\n"), TypeError, "bytes")


@pytest.mark.parametrize("data", [[], {}, None, 42, "ts,device\n1,a"])
def test_empty_and_unsupported_inputs_raise_what_native_raises(
    db2: Any, bad: str, data: object
) -> None:
    n = native.open(":memory:")
    try:
        n.execute(f"CREATE SOURCE {bad} (ts BIGINT NOT NULL, device VARCHAR, value DOUBLE, n INT)")
        with pytest.raises(Exception) as theirs:
            n.insert(bad, data)
    finally:
        n.close()
    ours = rejected(db2, bad, lambda: db2.insert(bad, data), type(theirs.value))
    assert str(ours) == str(theirs.value)


def test_one_bad_row_leaves_every_worker_unchanged(db2: Any, bad: str) -> None:
    """The rows would go to both workers; one cannot be cast; no worker keeps any of them."""
    keys = [f"k{i}" for i in range(100)]
    spread = placed(
        db2,
        lambda: db2.insert(
            bad, {"ts": list(range(100)), "device": keys, "value": [1.0] * 100, "n": [1] * 100}
        ),
    )
    assert all(s > 0 for s in spread), spread
    values: list[Any] = [float(i) for i in range(100)]
    values[57] = "not a number"
    data = {"ts": list(range(100)), "device": keys, "value": values, "n": [1] * 100}
    error = rejected(
        db2, bad, lambda: db2.insert(bad, data), laminardb.SchemaError, bad, "value", "57"
    )
    assert error.code == laminardb.codes.SCHEMA_MISMATCH  # type: ignore[attr-defined]


def test_a_failed_insert_keeps_earlier_buffered_rows(db2: Any, bad: str) -> None:
    before = count(db2, bad)
    db2.insert(bad, _good(ts=[500], device=["buffered"]))  # likely still buffered
    with pytest.raises(laminardb.SchemaError):
        db2.insert(bad, _good(ts=[None]))
    assert count(db2, bad) == before + 1
    assert db2.sql(f"SELECT ts FROM {bad} WHERE device = 'buffered'").fetchall() == [(500,)]


def test_row_bigger_than_the_arena_still_arrives_whole(small_arena: Any) -> None:
    """A row too big for the 1 MiB arena travels in the message itself; nothing is lost."""
    db = small_arena
    name = fresh("huge_row")
    db.execute(f"CREATE SOURCE {name} (k VARCHAR, s VARCHAR) PARTITION BY (k)")
    db.insert(name, {"k": list("abcd"), "s": ["x"] * 4})
    huge = "z" * (2 << 20)
    assert db.insert(name, {"k": list("abcde"), "s": ["y"] * 4 + [huge]}) == 5
    assert count(db, name) == 9
    assert db.sql(f"SELECT length(s) FROM {name} WHERE k = 'e'").fetchall() == [(len(huge),)]
    assert db.insert(name, {"k": ["f"], "s": ["w"]}) == 1
    assert count(db, name) == 10


# ---------------------------------------------------------------------------------------------
# Closed and shut-down connections
# ---------------------------------------------------------------------------------------------


def _native_error(setup: Callable[[Any], None], call: Callable[[Any], object]) -> BaseException:
    n = native.open(":memory:")
    n.execute("CREATE SOURCE gone (a BIGINT)")
    setup(n)
    try:
        call(n)
    except Exception as exc:
        return exc
    finally:
        n.close()
    raise AssertionError("native did not raise")


def test_closed_connection_raises_connection_error() -> None:
    db = laminardb.open(":memory:", workers=1)
    db.execute("CREATE SOURCE gone (a BIGINT)")
    db.insert("gone", {"a": [1]})
    db.close()
    assert db.is_closed
    calls: list[Callable[[Any], object]] = [
        lambda c: c.insert("gone", {"a": [1]}),
        lambda c: c.insert_json("gone", '{"a": 1}'),
        lambda c: c.insert_csv("gone", "a\n1\n"),
        lambda c: c.sql("SELECT 1"),
        lambda c: c.execute("CREATE SOURCE x (a BIGINT)"),
        lambda c: c.list_tables(),
        lambda c: c.writer("gone"),
    ]
    for call in calls:
        theirs = _native_error(lambda n: n.close(), call)
        with pytest.raises(laminardb.ConnectionError) as ours:
            call(db)
        assert type(ours.value).__name__ == type(theirs).__name__ == "ConnectionError"
        assert str(ours.value) == str(theirs)
    assert not isinstance(ours.value, ConnectionRefusedError)


def test_after_shutdown_queries_raise_shutdown_901() -> None:
    db = laminardb.open(":memory:", workers=1)
    db.execute("CREATE SOURCE gone (a BIGINT)")
    db.shutdown()
    theirs = _native_error(lambda n: n.shutdown(), lambda n: n.sql("SELECT 1"))
    for call in (lambda: db.sql("SELECT 1"), lambda: db.execute("SELECT 1")):
        with pytest.raises(laminardb.LaminarError) as ours:
            call()
        assert type(ours.value) is laminardb.LaminarError
        assert ours.value.code == theirs.code == laminardb.codes.SHUTDOWN  # type: ignore[attr-defined]
        assert str(ours.value) == str(theirs)
    n = native.open(":memory:")
    n.shutdown()
    assert (db.is_closed, db.pipeline_state) == (n.is_closed, n.pipeline_state)
    n.close()
    db.close()
    assert db.is_closed
