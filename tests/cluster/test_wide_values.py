"""16-byte values (DECIMAL) after a NULL bitmap: the engine panics on such a buffer off a
16-byte boundary, and an IPC stream aligns to 8 only. Inserts, partial results and gathered
rows must all reach an engine aligned: same answers as one native instance, no dead worker."""

from __future__ import annotations

import decimal
from collections import Counter
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

from laminardb.wire import arrow_ipc

pytestmark = pytest.mark.timeout(120)

DDL = "CREATE SOURCE {name} (g BIGINT, flag BOOLEAN, price DECIMAL(10,2), note VARCHAR)"
QUERIES = [
    "SELECT * FROM {name}",
    "SELECT sum(price), count(price), min(price), max(price) FROM {name} WHERE g > 3",
    "SELECT g % 3 AS b, sum(price) FROM {name} GROUP BY g % 3",
    "SELECT g, price FROM {name} WHERE g < 7 ORDER BY g LIMIT 5",
    "SELECT approx_percentile_cont(g, 0.5), max(price) FROM {name}",  # gathered
]


def _rows(n: int) -> pa.Table:
    return pa.table(
        {
            "g": pa.array(range(n), pa.int64()),
            "flag": pa.array([None if i % 3 else i % 2 == 0 for i in range(n)]),
            "price": pa.array(
                [None if i % 4 == 1 else decimal.Decimal(i) / 4 for i in range(n)],
                pa.decimal128(10, 2),
            ),
            "note": pa.array([None if i % 5 == 0 else f"n{i}" for i in range(n)]),
        }
    )


@pytest.mark.parametrize("rows", [3, 50])
def test_decimals_with_nulls_match_native(db2: Any, rows: int) -> None:
    name = f"wide_{rows}"
    data = _rows(rows)
    db2.execute(DDL.format(name=name))
    db2.insert(name, data)
    db2.insert(name, data.to_pylist()[:2])  # the dict path too
    one = native.open(":memory:")
    try:
        one.execute(DDL.format(name=name))
        one.insert(name, data)
        one.insert(name, data.slice(0, 2))
        for sql in QUERIES:
            sql = sql.format(name=name)
            assert Counter(db2.sql(sql).fetchall()) == Counter(one.sql(sql).fetchall()), sql
    finally:
        one.close()
    assert all(w.alive for w in db2._cluster.workers)


def test_loads_realigns_wide_buffers() -> None:
    table = _rows(7).select(["flag", "price"])
    stream = arrow_ipc.dumps(table).to_pybytes()
    for shift in range(0, 64, 8):  # wherever the stream lands, its decimals come out aligned
        room = bytearray(len(stream) + 64)
        view = memoryview(room)[shift : shift + len(stream)]
        view[:] = stream
        out = arrow_ipc.loads(view)
        price = out.column("price").chunk(0)
        assert price.buffers()[1].address % 16 == 0
        assert out.equals(table)
