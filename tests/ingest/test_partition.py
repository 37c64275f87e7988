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
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as hs

from laminardb.api.errors import SchemaError
from laminardb.ingest import partition, xxh3
from laminardb.ingest.partition import (
    N_VSHARDS,
    RoundRobin,
    key_digests,
    split,
    vshards,
    worker_of,
)

pytestmark = pytest.mark.timeout(120)

_DEFAULT_FEW = (partition._FEW, xxh3._FEW)


@pytest.fixture(autouse=True, scope="module")
def _numpy_for_every_size() -> Iterator[None]:
    """Small columns are normally hashed by `xxhash` one value at a time: in this module
    they take the sampled, numpy paths of large columns (see test_small_columns_...)."""
    partition._FEW = xxh3._FEW = 0
    yield
    partition._FEW, xxh3._FEW = _DEFAULT_FEW


def h(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def i64(value: int) -> bytes:
    return struct.pack("<q", value)


def one(value: Any, typ: pa.DataType | None = None) -> int:
    """The virtual shard of a one-row, one-column table."""
    return int(vshards(pa.table({"k": pa.array([value], type=typ)}), ["k"])[0])


# ------------------------------------------------------------------------- canonical bytes


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


@pytest.mark.parametrize("columns", [30, 31, 40])
def test_composite_key_of_many_columns(columns: int) -> None:
    """17..30 columns are 136..240 bytes (numpy), more go through xxhash one by one."""
    table = pa.table({f"c{i}": [i, -i] for i in range(columns)})
    for row, sign in enumerate((1, -1)):
        digests = [h(i64(sign * i)) for i in range(columns)]
        expected = h(struct.pack(f"<{columns}Q", *digests)) % 256
        assert int(vshards(table, table.column_names)[row]) == expected


# ------------------------------------------------------------------------- string keys

_STRING_TYPES = [pa.string(), pa.large_string(), pa.string_view()]
_BINARY_TYPES = [pa.binary(), pa.large_binary(), pa.binary_view()]


def check_digests(column: pa.Array | pa.ChunkedArray, values: list[bytes | None]) -> None:
    """The key digests of a one-column table are xxhash's, and NULL rows go to vshard 0."""
    table = pa.table({"k": column})
    digests, nulls = key_digests(table, ["k"])
    is_null = [v is None for v in values]
    assert (nulls.tolist() if nulls is not None else [False] * len(values)) == is_null
    got = [None if null else int(d) for d, null in zip(digests.tolist(), is_null, strict=True)]
    assert got == [None if v is None else h(v) for v in values]
    shards = vshards(table, ["k"]).tolist()
    assert shards == [0 if v is None else h(v) % N_VSHARDS for v in values]


@settings(max_examples=150, deadline=None)
@given(
    values=hs.lists(hs.one_of(hs.none(), hs.text(max_size=90)), max_size=80),
    cut=hs.tuples(hs.integers(0, 80), hs.integers(0, 80)),
    typ=hs.sampled_from(_STRING_TYPES),
)
def test_string_keys_hash_their_utf8_bytes(
    values: list[str | None], cut: tuple[int, int], typ: pa.DataType
) -> None:
    encoded = [None if v is None else v.encode("utf-8") for v in values]
    check_digests(pa.array(values, typ), encoded)
    start, length = min(cut[0], len(values)), cut[1]
    check_digests(pa.array(values, typ).slice(start, length), encoded[start : start + length])


@settings(max_examples=150, deadline=None)
@given(
    values=hs.lists(hs.one_of(hs.none(), hs.binary(max_size=300)), max_size=60),
    cut=hs.integers(0, 60),
    typ=hs.sampled_from(_BINARY_TYPES),
)
def test_binary_keys_hash_their_bytes(
    values: list[bytes | None], cut: int, typ: pa.DataType
) -> None:
    cut = min(cut, len(values))
    check_digests(pa.array(values, typ), values)
    chunked = pa.chunked_array(
        [pa.array(values[:cut], typ).slice(0), pa.array(values[cut:], typ)], type=typ
    )
    check_digests(chunked, values)
    check_digests(pa.array(values, typ).slice(cut), values[cut:])


@settings(max_examples=60, deadline=None)
@given(
    width=hs.sampled_from([1, 3, 4, 8, 9, 13, 16, 17, 40, 128, 129, 240, 241, 300]),
    nulls=hs.lists(hs.booleans(), min_size=1, max_size=30),
    cut=hs.integers(0, 30),
    seed=hs.integers(0, 2**32 - 1),
)
def test_fixed_size_binary_keys(width: int, nulls: list[bool], cut: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values: list[bytes | None] = [
        None if null else bytes(rng.integers(0, 256, width, dtype=np.uint8)) for null in nulls
    ]
    array = pa.array(values, pa.binary(width))
    check_digests(array, values)
    cut = min(cut, len(values))
    check_digests(array.slice(cut), values[cut:])


@pytest.mark.parametrize("distinct", [5, 100, 3000, 200_000])
@pytest.mark.parametrize("shape", ["device-%06d", "%d", "user-%d@example.com", "%d" + "x" * 150])
def test_string_keys_of_many_rows(distinct: int, shape: str) -> None:
    """Few and many distinct values (dictionary and per-row paths), one length and mixed
    lengths, some NULLs, several chunks, one of them sliced."""
    rng = np.random.default_rng(distinct)
    values: list[str | None] = [shape % i for i in rng.integers(0, distinct, 60_000)]
    for i in rng.integers(0, len(values), 50):
        values[i] = None
    whole = pa.array(["?"] * 7 + values[20_000:])
    chunked = pa.chunked_array([pa.array(values[:20_000]), whole.slice(7)])
    check_digests(chunked, [None if v is None else v.encode() for v in values])


def test_dictionary_encoding_is_used_only_when_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    real = pc.dictionary_encode

    def spy(arr: Any, *args: Any, **kwargs: Any) -> Any:
        encoded.append(len(arr))
        return real(arr, *args, **kwargs)

    monkeypatch.setattr(pc, "dictionary_encode", spy)  # the module partition uses
    few_even = [f"device-{i % 50:06d}" for i in range(10_000)]
    few_long = [f"user-{i % 50}@example.com" for i in range(10_000)]
    many = [f"user-{i}@example.com" for i in range(10_000)]
    for values, dictionary in ((few_even, False), (few_long, True), (many, False)):
        encoded.clear()
        check_digests(pa.array(values), [v.encode() for v in values])
        assert bool(encoded) == dictionary


@pytest.mark.parametrize("rows", [1, 7, 127, 128, 255, 256, 257, 1000])
def test_small_columns_take_the_one_by_one_path_and_agree(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition, "_FEW", _DEFAULT_FEW[0])
    monkeypatch.setattr(xxh3, "_FEW", _DEFAULT_FEW[1])
    rng = np.random.default_rng(rows)
    values: list[str | None] = [
        None if i % 11 == 3 else "é" * int(rng.integers(0, 150)) + str(i) for i in range(rows)
    ]
    for typ in _STRING_TYPES:
        check_digests(pa.array(values, typ), [None if v is None else v.encode() for v in values])


def test_null_slots_with_bytes_behind_them() -> None:
    """A NULL slot may cover bytes (arrays built from buffers): they are hashed, not read
    as part of a neighbour, and the row still goes to vshard 0."""
    offsets = pa.py_buffer(np.array([0, 13, 16, 29, 29], np.int32).tobytes())
    data = pa.py_buffer(b"device-000001xyzdevice-000002")
    validity = pa.py_buffer(bytes([0b1101]))
    array = pa.StringArray.from_buffers(4, offsets, data, validity, null_count=1)
    check_digests(array, [b"device-000001", None, b"device-000002", b""])


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


@pytest.mark.parametrize("distinct", [3, 5000])
@pytest.mark.parametrize("chunk_rows", [1, 100, 4096])
def test_many_small_chunks_route_like_one_chunk(distinct: int, chunk_rows: int) -> None:
    """A flush of many small inserts (many chunks, each under the one-by-one threshold)
    hashes and splits exactly like the same rows in one chunk."""
    rows = 9000
    keys = [f"k{i % distinct}" + "x" * (i % 3) for i in range(rows)]
    one = pa.table({"k": keys, "pos": list(range(rows))})
    chunks = [one.slice(i, chunk_rows) for i in range(0, rows, chunk_rows)]
    many = pa.concat_tables(chunks)
    assert many.column("k").num_chunks == len(chunks)
    expected = xxh3.digests([k.encode() for k in keys], rows)
    assert np.array_equal(key_digests(many, ["k"])[0], expected)
    for got, want in zip(split(many, ["k"], 3), split(one, ["k"], 3), strict=True):
        assert got.equals(want)


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
