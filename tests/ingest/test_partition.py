"""Row routing by key: the hash is the specified one, stable across processes, and `split`
is an exact, key-respecting partition of its input."""

from __future__ import annotations

import collections
import datetime
import decimal
import os
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as hs

from laminardb.api.errors import SchemaError
from laminardb.ingest.partition import (
    N_VSHARDS,
    RoundRobin,
    split,
    vshards,
    worker_of,
    xxh3_u64,
    xxh3_words,
)

pytestmark = pytest.mark.timeout(60)


def h(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def i64(value: int) -> bytes:
    return struct.pack("<q", value)


def one(value: Any, typ: pa.DataType | None = None) -> int:
    """The virtual shard of a one-row, one-column table."""
    return int(vshards(pa.table({"k": pa.array([value], type=typ)}), ["k"])[0])


# ------------------------------------------------------------------------- the hash itself


def test_numpy_xxh3_matches_xxhash_for_8_bytes() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [rng.integers(0, 2**64, 5000, dtype=np.uint64), np.array([0, 1, 2**64 - 1], np.uint64)]
    )
    expected = [h(struct.pack("<Q", int(v))) for v in values]
    assert xxh3_u64(values).tolist() == expected


@pytest.mark.parametrize("k", range(2, 17))
def test_numpy_xxh3_matches_xxhash_for_2_to_16_words(k: int) -> None:
    rng = np.random.default_rng(k)
    words = rng.integers(0, 2**64, (500, k), dtype=np.uint64)
    expected = [h(row.astype("<u8").tobytes()) for row in words]
    assert xxh3_words(words).tolist() == expected


def test_numpy_xxh3_handles_many_blocks() -> None:
    values = np.arange(100_003, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    got = xxh3_u64(values)
    for i in (0, 32767, 32768, 65536, 100_002):
        assert int(got[i]) == h(struct.pack("<Q", int(values[i])))


@pytest.mark.parametrize(
    ("value", "typ", "canonical"),
    [
        (42, pa.int64(), i64(42)),
        (-7, pa.int8(), i64(-7)),
        (2**63 + 5, pa.uint64(), struct.pack("<Q", 2**63 + 5)),
        (1.5, pa.float64(), struct.pack("<d", 1.5)),
        (1.5, pa.float32(), struct.pack("<d", 1.5)),
        (-0.0, pa.float64(), struct.pack("<d", 0.0)),
        ("héllo", pa.string(), "héllo".encode()),
        ("", pa.string(), b""),
        (b"\x00\xff", pa.binary(), b"\x00\xff"),
        (True, pa.bool_(), b"\x01"),
        (False, pa.bool_(), b"\x00"),
        (decimal.Decimal("12.50"), pa.decimal128(10, 2), b"12.50"),
        (datetime.date(1970, 1, 3), pa.date32(), i64(2)),
        (datetime.datetime(1970, 1, 1, 0, 0, 1), pa.timestamp("us"), i64(1_000_000)),
        (datetime.timedelta(milliseconds=3), pa.duration("ms"), i64(3)),
    ],
)
def test_canonical_bytes(value: Any, typ: pa.DataType, canonical: bytes) -> None:
    assert one(value, typ) == h(canonical) % N_VSHARDS


def test_nan_payloads_hash_alike() -> None:
    other_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    assert one(float("nan")) == one(other_nan) == h(struct.pack("<d", float("nan"))) % 256


def test_integer_widths_and_temporal_types_agree_on_equal_values() -> None:
    shards = {
        one(value, typ)
        for value, typ in [
            (123456, pa.int32()),
            (123456, pa.int64()),
            (123456, pa.uint32()),
            (123456, pa.uint64()),
        ]
    }
    assert len(shards) == 1
    assert one(5, pa.int8()) == one(5, pa.int16()) == one(5, pa.int64())
    assert one(2, pa.int64()) == one(datetime.date(1970, 1, 3), pa.date32())


def test_string_like_types_agree() -> None:
    values = ["a", "bb", None, "a", "ccc"]
    reference = vshards(pa.table({"k": pa.array(values, pa.string())}), ["k"]).tolist()
    for typ in (pa.large_string(), pa.string_view()):
        assert vshards(pa.table({"k": pa.array(values, typ)}), ["k"]).tolist() == reference
    encoded = pa.array(values).dictionary_encode()
    assert vshards(pa.table({"k": encoded}), ["k"]).tolist() == reference
    raw = [None if v is None else v.encode() for v in values]
    for btyp in (pa.binary(), pa.large_binary()):
        assert vshards(pa.table({"k": pa.array(raw, btyp)}), ["k"]).tolist() == reference


def test_fixed_size_binary_and_sliced_arrays() -> None:
    arr = pa.array([b"abcd", b"efgh", b"ijkl"], pa.binary(4))
    got = vshards(pa.table({"k": arr.slice(1)}), ["k"]).tolist()
    assert got == [h(b"efgh") % 256, h(b"ijkl") % 256]
    strings = pa.array(["x", "yy", "zzz"]).slice(1, 2)
    assert vshards(pa.table({"k": strings}), ["k"]).tolist() == [h(b"yy") % 256, h(b"zzz") % 256]


@pytest.mark.parametrize("distinct", [3, 50_000])
def test_few_and_many_distinct_strings_give_the_specified_hash(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    values = [f"v{i}" for i in rng.integers(0, distinct, 60_000)]
    chunked = pa.chunked_array([values[:25_000], values[25_000:]])
    got = vshards(pa.table({"k": chunked}), ["k"])
    assert got.tolist() == [h(v.encode()) % 256 for v in values]


def test_composite_key_hashes_the_column_digests() -> None:
    table = pa.table({"a": pa.array([7], pa.int32()), "b": ["x"], "c": [2.5]})
    da, db, dc = h(i64(7)), h(b"x"), h(struct.pack("<d", 2.5))
    assert vshards(table, ["a", "b"]).tolist() == [h(struct.pack("<QQ", da, db)) % 256]
    assert vshards(table, ["b", "a"]).tolist() == [h(struct.pack("<QQ", db, da)) % 256]
    assert vshards(table, ["a", "b", "c"]).tolist() == [h(struct.pack("<QQQ", da, db, dc)) % 256]


def test_composite_key_of_more_than_16_columns() -> None:
    table = pa.table({f"c{i}": [i] for i in range(17)})
    digests = [h(i64(i)) for i in range(17)]
    expected = h(struct.pack("<17Q", *digests)) % 256
    assert vshards(table, table.column_names).tolist() == [expected]


def test_null_in_any_key_column_goes_to_vshard_zero() -> None:
    table = pa.table(
        {
            "a": pa.array([1, None, 3, None, 5], pa.int64()),
            "b": pa.array(["x", "y", None, None, "z"]),
            "n": pa.array([None] * 5, pa.null()),
        }
    )
    single = vshards(table, ["a"]).tolist()
    assert single[1] == single[3] == 0
    assert single[0] == h(i64(1)) % 256
    both = vshards(table, ["a", "b"]).tolist()
    assert both[1:4] == [0, 0, 0]
    assert both[0] != 0 or h(struct.pack("<QQ", h(i64(1)), h(b"x"))) % 256 == 0
    assert vshards(table, ["n"]).tolist() == [0] * 5


def test_vshards_shape_dtype_and_range() -> None:
    table = pa.table({"k": np.arange(10_000)})
    shards = vshards(table, ["k"])
    assert shards.dtype == np.uint16 and shards.shape == (10_000,)
    assert shards.max() < N_VSHARDS
    assert len(np.unique(shards)) == N_VSHARDS
    assert vshards(table.slice(0, 0), ["k"]).shape == (0,)
    assert vshards(pa.table({"k": pa.array([], pa.string())}), ["k"]).shape == (0,)


def test_bad_keys() -> None:
    table = pa.table({"k": [1], "l": pa.array([[1]], pa.list_(pa.int64()))})
    with pytest.raises(SchemaError):
        vshards(table, ["nope"])
    with pytest.raises(SchemaError):
        vshards(table, ["l"])
    with pytest.raises(ValueError):
        vshards(table, [])


_SCRIPT = """
import sys, pyarrow as pa
from laminardb.ingest.partition import vshards
t = pa.table({"s": [f"key{i}" for i in range(300)] + [None], "i": list(range(301))})
print(",".join(map(str, vshards(t, ["s"]).tolist() + vshards(t, ["s", "i"]).tolist())))
"""


def test_same_keys_same_vshards_in_other_processes() -> None:
    outputs = set()
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(run.stdout.strip())
    table = pa.table({"s": [f"key{i}" for i in range(300)] + [None], "i": list(range(301))})
    here = ",".join(map(str, vshards(table, ["s"]).tolist() + vshards(table, ["s", "i"]).tolist()))
    assert outputs == {here}


# ------------------------------------------------------------------------- routing


def test_worker_of_and_round_robin() -> None:
    assert [worker_of(v, 3) for v in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert worker_of(255, 1) == 0
    rr = RoundRobin()
    assert [rr.next(3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        worker_of(1, 0)
    with pytest.raises(ValueError):
        rr.next(0)


def test_split_matches_vshards_and_keeps_row_order() -> None:
    table = pa.table({"k": [f"u{i % 37}" for i in range(1000)], "pos": list(range(1000))})
    parts = split(table, ["k"], 3)
    assert len(parts) == 3
    shards = vshards(table, ["k"])
    for w, part in enumerate(parts):
        assert part.schema == table.schema
        positions = part.column("pos").to_pylist()
        assert positions == sorted(positions)
        assert all(worker_of(int(shards[p]), 3) == w for p in positions)
    assert split(table, ["k"], 1)[0].equals(table)
    with pytest.raises(ValueError):
        split(table, ["k"], 0)


def test_split_can_give_empty_parts() -> None:
    table = pa.table({"k": [5, 5, 5]})
    parts = split(table, ["k"], 4)
    assert sorted(p.num_rows for p in parts) == [0, 0, 0, 3]


_rows = hs.lists(
    hs.tuples(
        hs.one_of(hs.none(), hs.integers(-(2**63), 2**63 - 1), hs.sampled_from([0, 1, 2, 3])),
        hs.one_of(hs.none(), hs.text(max_size=5), hs.sampled_from(["a", "b"])),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(rows=_rows, n_workers=hs.integers(1, 9), composite=hs.booleans())
def test_split_is_a_partition_that_never_splits_a_key(
    rows: list[tuple[int | None, str | None]], n_workers: int, composite: bool
) -> None:
    table = pa.table(
        {
            "a": pa.array([r[0] for r in rows], pa.int64()),
            "b": pa.array([r[1] for r in rows], pa.string()),
            "pos": pa.array(range(len(rows)), pa.int64()),
        }
    )
    keys = ["a", "b"] if composite else ["b"]
    parts = split(table, keys, n_workers)
    assert len(parts) == n_workers
    positions = [p for part in parts for p in part.column("pos").to_pylist()]
    assert sorted(positions) == list(range(len(rows)))
    assert collections.Counter(
        tuple(r.values()) for part in parts for r in part.select(["a", "b"]).to_pylist()
    ) == collections.Counter(rows)
    owner: dict[tuple[Any, ...], int] = {}
    for w, part in enumerate(parts):
        for row in part.select(keys).to_pylist():
            key = tuple(row.values())
            assert owner.setdefault(key, w) == w
            if None in key:
                assert w == worker_of(0, n_workers)
