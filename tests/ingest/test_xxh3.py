"""The numpy XXH3 equals `xxhash.xxh3_64_intdigest` (seed 0) bit for bit, for every input
length class, every way of laying the inputs out, and across block boundaries."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as hs

from laminardb.ingest import xxh3
from laminardb.ingest.xxh3 import xxh3_binary, xxh3_fixed, xxh3_u64, xxh3_words

pytestmark = pytest.mark.timeout(120)

_DEFAULT_FEW = xxh3._FEW


@pytest.fixture(autouse=True, scope="module")
def _numpy_for_every_size() -> Iterator[None]:
    """Small inputs normally go through `xxhash` one by one: test the numpy paths instead."""
    xxh3._FEW = 0
    yield
    xxh3._FEW = _DEFAULT_FEW


def h(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def packed(values: list[bytes], prefix: bytes = b"") -> tuple[np.ndarray, np.ndarray]:
    """Arrow-style offsets and data buffer of `values` (after `prefix` bytes)."""
    data = np.frombuffer(prefix + b"".join(values), np.uint8)
    offsets = len(prefix) + np.concatenate([[0], np.cumsum([len(v) for v in values])])
    return offsets.astype(np.int64), data


def binary(values: list[bytes], prefix: bytes = b"") -> list[int]:
    offsets, data = packed(values, prefix)
    return [int(h) for h in xxh3_binary(offsets, data)]


# ------------------------------------------------------------------------- fixed widths


def test_u64_matches_xxhash() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [rng.integers(0, 2**64, 5000, dtype=np.uint64), np.array([0, 1, 2**64 - 1], np.uint64)]
    )
    assert xxh3_u64(values).tolist() == [h(struct.pack("<Q", int(v))) for v in values]


@pytest.mark.parametrize("k", range(2, 17))
def test_words_match_xxhash(k: int) -> None:
    rng = np.random.default_rng(k)
    words = rng.integers(0, 2**64, (500, k), dtype=np.uint64)
    assert xxh3_words(words).tolist() == [h(row.astype("<u8").tobytes()) for row in words]


def test_words_rejects_other_widths() -> None:
    with pytest.raises(ValueError):
        xxh3_words(np.zeros((3, 1), np.uint64))
    with pytest.raises(ValueError):
        xxh3_words(np.zeros((3, 17), np.uint64))


def test_many_blocks() -> None:
    n = 3 * xxh3.BLOCK + 5
    values = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    got = xxh3_u64(values)
    words = np.stack([values, ~values, values >> np.uint64(3)], axis=1)
    got_words = xxh3_words(words)
    for i in (0, xxh3.BLOCK - 1, xxh3.BLOCK, 2 * xxh3.BLOCK + 1, n - 1):
        assert int(got[i]) == h(struct.pack("<Q", int(values[i])))
        assert int(got_words[i]) == h(words[i].astype("<u8").tobytes())


# ------------------------------------------------------------------------- byte strings


@pytest.mark.parametrize("length", range(0, 301))
def test_every_length(length: int) -> None:
    rng = np.random.default_rng(length)
    values = [bytes(rng.integers(0, 256, length, dtype=np.uint8)) for _ in range(6)]
    values += [b"\x00" * length, b"\xff" * length]
    expected = [h(v) for v in values]
    # One length: the strided path; the buffer starts mid-way (a sliced array).
    assert binary(values, prefix=b"xyz") == expected
    _, data = packed(values, prefix=b"ab")
    assert xxh3_fixed(data, length, base=2, count=len(values)).tolist() == expected
    # Mixed with other lengths: the gathered path.
    others = [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(0, 300, 9)]
    mixed = [v for pair in zip(values, others, strict=False) for v in pair] + others[8:]
    assert binary(mixed) == [h(v) for v in mixed]
    # Next to empty values (NULL slots): the strided path with holes.
    holes = [v for value in values for v in (value, b"", b"")]
    assert binary(holes) == [h(v) for v in holes]


@settings(max_examples=300, deadline=None)
@given(values=hs.lists(hs.binary(max_size=300), max_size=60), prefix=hs.binary(max_size=9))
def test_random_byte_strings(values: list[bytes], prefix: bytes) -> None:
    assert binary(values, prefix) == [h(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(values=hs.lists(hs.text(max_size=80), max_size=60))
def test_random_utf8_strings(values: list[str]) -> None:
    encoded = [v.encode("utf-8") for v in values]
    assert binary(encoded) == [h(v) for v in encoded]


@settings(max_examples=100, deadline=None)
@given(
    length=hs.integers(0, 300),
    count=hs.integers(1, 40),
    empties=hs.lists(hs.booleans(), max_size=40),
    seed=hs.integers(0, 2**32 - 1),
)
def test_one_length_with_empty_values(
    length: int, count: int, empties: list[bool], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = [bytes(rng.integers(0, 256, length, dtype=np.uint8)) for _ in range(count)]
    values = [b"" if i < len(empties) and empties[i] else v for i, v in enumerate(values)]
    assert binary(values) == [h(v) for v in values]


def test_mixed_lengths_across_blocks() -> None:
    rng = np.random.default_rng(11)
    n = 2 * xxh3.BLOCK + 77
    lengths = rng.choice([0, 1, 3, 7, 8, 13, 16, 17, 31, 64, 65, 100, 128, 129, 200, 240, 241], n)
    blob = bytes(rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    values = [blob[i:j] for i, j in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
    got = binary(values)
    assert got == [h(v) for v in values]
    same = [b"device-%06d" % i for i in range(n)]
    assert binary(same) == [h(v) for v in same]


def test_few_inputs_go_through_xxhash_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    values = [
        bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(0, 300, 500)
    ]
    expected = [h(v) for v in values]
    for few in (_DEFAULT_FEW, 0):
        monkeypatch.setattr(xxh3, "_FEW", few)
        for count in (0, 1, 5, _DEFAULT_FEW - 1, _DEFAULT_FEW, 500):
            assert binary(values[:count], prefix=b"pre") == expected[:count]


def test_tiny_and_empty_buffers() -> None:
    assert binary([]) == []
    assert binary([b""]) == [h(b"")]
    assert binary([b"", b""]) == [h(b"")] * 2
    assert binary([b"a", b"bc"]) == [h(b"a"), h(b"bc")]
    assert binary([b"abcd"]) == [h(b"abcd")]
    assert xxh3_binary(np.zeros(1, np.int32), np.zeros(0, np.uint8)).tolist() == []
    assert xxh3_fixed(np.zeros(0, np.uint8), 0, count=3).tolist() == [h(b"")] * 3
    assert xxh3_fixed(np.frombuffer(b"abcdef", np.uint8), 3).tolist() == [h(b"abc"), h(b"def")]


def test_garbage_around_the_values_is_not_read() -> None:
    """Loads stay inside each value: bytes between values (a NULL slot's) and after the last
    one do not matter."""
    values = [b"x" * n for n in (5, 12, 20, 70, 150)]
    for filler in (b"\x00", b"\xff"):
        blob = b""
        bounds = []
        for v in values:
            blob += filler * 3
            bounds.append((len(blob), len(blob) + len(v)))
            blob += v
        blob += filler * 300
        data = np.frombuffer(blob, np.uint8)
        got = [int(xxh3_binary(np.array(pair), data)[0]) for pair in bounds]
        assert got == [h(v) for v in values]


def test_the_workers_block_size_gives_the_same_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers with several threads hash in larger blocks (workers/server.py): the digests,
    and so the owner of every key, must not depend on it."""
    from workers.server import EXCHANGE_BLOCK

    rng = np.random.default_rng(8)
    n = EXCHANGE_BLOCK + 3 * xxh3.BLOCK + 11
    lengths = rng.integers(0, 40, n)
    data = rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ints = rng.integers(0, 2**64, n, dtype=np.uint64)
    before = xxh3_binary(offsets, data), xxh3_u64(ints), xxh3_fixed(data[: 7 * n], 7)
    monkeypatch.setattr(xxh3, "BLOCK", EXCHANGE_BLOCK)
    after = xxh3_binary(offsets, data), xxh3_u64(ints), xxh3_fixed(data[: 7 * n], 7)
    for old, new in zip(before, after, strict=True):
        assert np.array_equal(old, new)
