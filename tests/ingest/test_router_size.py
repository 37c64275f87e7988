"""The router's buffer accounting: its cheap size estimate never undercounts a small table (nor
much overcounts it) and never counts a big table's buffers for a small slice of it."""

from __future__ import annotations

import pyarrow as pa

from laminardb.ingest.router import _size


def test_size_of_a_small_table_is_its_nbytes() -> None:
    table = pa.table({"ts": list(range(100)), "device": [f"d{i}" for i in range(100)]})
    assert table.nbytes <= _size(table) <= table.nbytes + 64  # padding of its buffers


def test_size_of_a_small_slice_of_a_big_table_is_the_slice() -> None:
    big = pa.table({"v": pa.array(range(1_000_000), pa.int64())})
    part = big.slice(10, 100)
    assert _size(part) == part.nbytes == 800
