"""`create_table(name, schema)` gives the columns native's gives, for every Arrow type and
every type string native knows, with native's errors; a key that cannot route is refused."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb

pytestmark = pytest.mark.timeout(60)

_names = (f"ct{i}" for i in itertools.count())

ARROW_TYPES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.string_view(),
    pa.binary(),
    pa.large_binary(),
    pa.binary(4),
    pa.date32(),
    pa.date64(),
    pa.time32("ms"),
    pa.time64("us"),
    pa.timestamp("s"),
    pa.timestamp("ms"),
    pa.timestamp("ns"),
    pa.timestamp("us", "UTC"),
    pa.duration("us"),
    pa.month_day_nano_interval(),
    pa.decimal128(10, 2),
    pa.decimal256(40, 2),
    pa.list_(pa.int64()),
    pa.struct([("a", pa.int64())]),
    pa.dictionary(pa.int32(), pa.string()),
    pa.null(),
]

TYPE_STRINGS = [
    "int", "INT", "i64", "Int64", "int8", "int16", "int32", "float", "f64", "Float64", "double",
    "float16", "bool", "Boolean", "str", "utf8", "large_string", "bytes", "binary", "date",
    "date32", "timestamp", "DateTime",
]  # fmt: skip


@pytest.fixture(scope="module")
def nat() -> Iterator[Any]:
    conn = native.open(":memory:")
    yield conn
    conn.close()


def _outcome(conn: Any, schema: object) -> object:
    name = next(_names)
    try:
        conn.create_table(name, schema)
    except Exception as exc:  # the class and message are what is compared
        return type(exc).__name__, str(exc)
    return conn.schema(name)


@pytest.mark.parametrize("kind", ARROW_TYPES, ids=str)
def test_arrow_types_get_native_columns(db2: Any, nat: Any, kind: pa.DataType) -> None:
    schema = pa.schema([pa.field("a", kind), pa.field("b", pa.int64(), nullable=False)])
    assert _outcome(db2, schema) == _outcome(nat, schema)


def test_type_strings_and_errors_are_natives(db2: Any, nat: Any) -> None:
    for kind in TYPE_STRINGS:
        assert _outcome(db2, {"a": kind, "b": "int64"}) == _outcome(nat, {"a": kind, "b": "int64"})
    for wrong in ({"a": "nonsense"}, {"a": "varchar"}, "x", 5, None):
        ours, theirs = _outcome(db2, wrong), _outcome(nat, wrong)
        assert ours == theirs and isinstance(ours, tuple)
    assert isinstance(_outcome(db2, {"a": "uint8"}), tuple)  # the engine refuses unsigned


def test_an_interval_key_is_refused_and_nothing_is_created(db2: Any) -> None:
    name = next(_names)
    with pytest.raises(laminardb.SchemaError, match=f"'i' of '{name}' is an INTERVAL"):
        db2.execute(f"CREATE SOURCE {name} (id BIGINT, i INTERVAL) PARTITION BY (i)")
    assert name not in db2.list_tables()
    db2.execute(f"CREATE SOURCE {name} (id BIGINT, i INTERVAL) PARTITION BY (id)")
    assert db2.insert(name, [{"id": 1, "i": None}]) == 1
    assert db2.sql(f"SELECT count(*) AS n FROM {name}").to_dicts() == {"n": [1]}
