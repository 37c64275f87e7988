"""Stable routing of a keyed source's rows to workers (DESIGN.md decision 3).

key → `xxh3_64` of the key's canonical bytes → one of 256 virtual shards (`h % 256`) →
worker `vshard % n_workers`. The mapping depends only on the key's value and type family,
never on the process (Python's `hash()` is salted per process and is never used), so a key
always lands on the same worker for a given worker count.

Canonical bytes of one value: integers of any width and signedness, timestamps, dates, times
and durations as signed int64 little-endian (8 bytes, the stored integer: the coordinator has
already cast batches to the declared type); floats as float64 with -0.0 made 0.0 and every NaN
made the canonical NaN; strings as UTF-8; binary as is; booleans as one byte 0/1; decimals as
their Python `str` form. A composite key hashes the concatenation of its columns' 8-byte
little-endian digests. A NULL in any key column sends the row to virtual shard 0.

Speed: 8-byte and 16..128-byte inputs are hashed by a numpy transcription of XXH3's short-input
paths (checked against the `xxhash` package in the tests), so integer, float and composite keys
are hashed without a Python loop. Variable-length values are dictionary-encoded and only the
distinct values go through `xxhash` one by one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from laminardb.api.errors import SchemaError, codes

N_VSHARDS = 256
"""Virtual shards per source; upstream LaminarDB's cluster mode uses the same count."""

U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]

_SECRET_BYTES = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
)
_SECRET = [np.uint64(int.from_bytes(_SECRET_BYTES[i : i + 8], "little")) for i in range(0, 128, 8)]
"""The first 128 bytes of XXH3's default secret (kSecret), as little-endian 64-bit words."""

_PRIME64_1 = np.uint64(0x9E3779B185EBCA87)
_PRIME_MX1 = np.uint64(0x165667919E3779F9)
_PRIME_MX2 = np.uint64(0x9FB21C651E98DF25)
_M32 = np.uint64(0xFFFFFFFF)


def _u(x: int) -> np.uint64:
    return np.uint64(x)


def _rotl(x: U64, r: int) -> U64:
    return (x << _u(r)) | (x >> _u(64 - r))


def _mul128_fold64(a: U64, b: U64) -> U64:
    """Low xor high half of the 128-bit products a*b, from 32-bit limbs (XXH_mult64to128)."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _u(32), b & _M32, b >> _u(32)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> _u(32)) + (hi_lo & _M32) + lo_hi
    upper = (hi_lo >> _u(32)) + (cross >> _u(32)) + hi_hi
    lower = (cross << _u(32)) | (lo_lo & _M32)
    folded: U64 = lower ^ upper
    return folded


def _avalanche(h: U64) -> U64:
    h ^= h >> _u(37)
    h *= _PRIME_MX1
    h ^= h >> _u(32)
    return h


_SAMPLE = 4096
"""Rows sampled to decide whether a string-like key column is worth dictionary-encoding."""

_BLOCK = 1 << 15
"""Rows hashed per numpy pass: the temporaries of a block stay in cache (about 3x faster)."""


def _blockwise(f: Callable[[U64], U64], values: U64) -> U64:
    if len(values) <= _BLOCK:
        return f(values)
    out = np.empty(len(values), np.uint64)
    for start in range(0, len(values), _BLOCK):
        out[start : start + _BLOCK] = f(values[start : start + _BLOCK])
    return out


def xxh3_u64(values: U64) -> U64:
    """xxh3_64 (seed 0) of each value's 8 little-endian bytes (XXH3_len_4to8_64b)."""
    return _blockwise(_xxh3_8, values)


def _xxh3_8(values: U64) -> U64:
    with np.errstate(over="ignore"):
        h = ((values >> _u(32)) | (values << _u(32))) ^ (_SECRET[1] ^ _SECRET[2])
        h ^= _rotl(h, 49) ^ _rotl(h, 24)
        h *= _PRIME_MX2
        h ^= (h >> _u(35)) + _u(8)
        h *= _PRIME_MX2
        h ^= h >> _u(28)
        return h


def xxh3_words(words: U64) -> U64:
    """xxh3_64 (seed 0) of each row of a (rows, k) uint64 matrix taken as 8*k little-endian
    bytes, for 2 <= k <= 16 (XXH3_len_9to16_64b and XXH3_len_17to128_64b)."""
    if not 2 <= words.shape[1] <= 16:
        raise ValueError(f"xxh3_words handles 2..16 words, got {words.shape[1]}")
    return _blockwise(_xxh3_words, words)


def _xxh3_words(words: U64) -> U64:
    k = words.shape[1]
    n = _u(8 * k)
    with np.errstate(over="ignore"):
        if k == 2:
            lo = words[:, 0] ^ (_SECRET[3] ^ _SECRET[4])
            hi = words[:, 1] ^ (_SECRET[5] ^ _SECRET[6])
            return _avalanche(n + lo.byteswap() + hi + _mul128_fold64(lo, hi))
        acc = np.full(len(words), n * _PRIME64_1, dtype=np.uint64)
        pairs = [(0, 0), (k - 2, 2)]
        if k > 4:
            pairs += [(2, 4), (k - 4, 6)]
        if k > 8:
            pairs += [(4, 8), (k - 6, 10)]
        if k > 12:
            pairs += [(6, 12), (k - 8, 14)]
        for word, secret in pairs:
            acc += _mul128_fold64(
                words[:, word] ^ _SECRET[secret], words[:, word + 1] ^ _SECRET[secret + 1]
            )
        return _avalanche(acc)


def _each_value(values: pa.Array) -> U64:
    """xxh3_64 of every value of a string-like array, NULL slots included (masked later).

    Hashes slices of the Arrow buffers to skip building Python strings."""
    typ = values.type
    n = len(values)
    if pa.types.is_decimal(typ):
        texts = [b"" if v is None else str(v).encode("utf-8") for v in values.to_pylist()]
        return _digests_of(texts, n)
    buffers = values.buffers()
    data = memoryview(buffers[-1] if buffers[-1] is not None else b"")
    if pa.types.is_fixed_size_binary(typ):
        width = typ.byte_width
        begin = values.offset * width
        return _digests_of((data[i : i + width] for i in range(begin, begin + n * width, width)), n)
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(buffers[1], np.int64 if large else np.int32)
    bounds = offsets[values.offset : values.offset + n + 1].tolist()
    return _digests_of((data[i:j] for i, j in itertools.pairwise(bounds)), n)


def _digests_of(items: Iterable[bytes | memoryview], count: int) -> U64:
    return np.fromiter(map(xxhash.xxh3_64_intdigest, items), dtype=np.uint64, count=count)


def _varlen(arr: pa.ChunkedArray) -> U64:
    """Digests of a string-like column: of its distinct values then looked up by index when
    a sample shows few distinct values, else of every row (Arrow's hash table costs more than
    it saves when most values differ)."""
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_binary())
    n = len(arr)
    sample = arr.take(np.arange(0, n, max(1, n // _SAMPLE)))
    if pc.count_distinct(sample).as_py() * 4 > len(sample):
        return _concat([_each_value(chunk) for chunk in arr.chunks], n)
    encoded = pc.dictionary_encode(arr)
    table = _each_value(encoded.chunk(0).dictionary)
    return _concat([_take(table, chunk.indices) for chunk in encoded.chunks], n)


def _concat(parts: list[U64], n: int) -> U64:
    return np.concatenate(parts) if parts else np.zeros(n, np.uint64)


def _ints(arr: pa.ChunkedArray) -> U64:
    """The column's values as int64 bit patterns (NULLs as 0), viewed as uint64."""
    typ = arr.type
    if typ == pa.uint64() or not pa.types.is_integer(typ):
        signed = pa.int64() if typ.bit_width == 64 else pa.int32()
        arr = pa.chunked_array([c.view(signed) for c in arr.chunks], type=signed)
    arr = pc.fill_null(arr.cast(pa.int64()), 0)
    return np.ascontiguousarray(arr.to_numpy()).view(np.uint64)


def _floats(arr: pa.ChunkedArray) -> U64:
    values = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy()
    values = values + 0.0
    values[np.isnan(values)] = np.nan
    return np.ascontiguousarray(values).view(np.uint64)


def _column_digests(arr: pa.ChunkedArray) -> tuple[U64, Mask | None]:
    """Per-row xxh3_64 digest of one key column, and its NULL mask (None when no NULLs)."""
    typ = arr.type
    if len(arr) == 0:
        return np.zeros(0, np.uint64), None
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pa.types.is_dictionary(typ):
        return _column_digests(arr.cast(typ.value_type))
    if pa.types.is_integer(typ) or (pa.types.is_temporal(typ) and not pa.types.is_interval(typ)):
        return xxh3_u64(_ints(arr)), nulls
    if pa.types.is_floating(typ):
        return xxh3_u64(_floats(arr)), nulls
    if pa.types.is_boolean(typ):
        ones = pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)
        table = _digests_of([b"\x00", b"\x01"], 2)
        return table[ones.astype(np.intp)], nulls
    if pa.types.is_null(typ):
        return np.zeros(len(arr), np.uint64), np.ones(len(arr), np.bool_)
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_string_view(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_binary_view(typ)
        or pa.types.is_fixed_size_binary(typ)
        or pa.types.is_decimal(typ)
    ):
        return _varlen(arr), nulls
    raise SchemaError(
        f"Invalid schema ({codes.INVALID_SCHEMA}): type {typ} cannot be a partition key",
        code=codes.INVALID_SCHEMA,
    )


def _take(table: U64, indices: pa.Array) -> U64:
    """table[indices], with NULL indices giving 0 (their rows are masked as NULL anyway)."""
    positions = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
    return table[positions] if len(table) else np.zeros(len(indices), np.uint64)


def key_digests(table: pa.Table, keys: Sequence[str]) -> tuple[U64, Mask | None]:
    """xxh3_64 of each row's key (see the module docstring) and the mask of rows whose key
    has a NULL (None when none has)."""
    if not keys:
        raise ValueError("a partition key needs at least one column")
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise SchemaError(
            f"Schema mismatch ({codes.SCHEMA_MISMATCH}): partition key column(s) {missing} "
            f"not in {table.column_names}",
            code=codes.SCHEMA_MISMATCH,
        )
    parts = [_column_digests(table.column(k)) for k in keys]
    masks = [m for _, m in parts if m is not None]
    nulls = np.logical_or.reduce(masks) if masks else None
    if len(parts) == 1:
        return parts[0][0], nulls
    words = np.stack([d for d, _ in parts], axis=1)
    if len(parts) <= 16:
        return xxh3_words(words), nulls
    raw = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(len(words), -1)
    return _digests_of((row.tobytes() for row in raw), len(raw)), nulls


def vshards(table: pa.Table, keys: Sequence[str]) -> npt.NDArray[np.uint16]:
    """The virtual shard (0..255) of each row of `table` keyed by the columns `keys`."""
    digests, nulls = key_digests(table, keys)
    shards = (digests & _u(N_VSHARDS - 1)).astype(np.uint16)
    if nulls is not None:
        shards[nulls] = 0
    return shards


def worker_of(vshard: int, n_workers: int) -> int:
    """The worker that owns a virtual shard when there are `n_workers`."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return vshard % n_workers


def split(table: pa.Table, keys: Sequence[str], n_workers: int) -> list[pa.Table]:
    """`table` cut into one part per worker by key (parts may have no rows; row order inside
    a part is the input order). Every row is in exactly one part."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    workers = vshards(table, keys) % np.uint16(n_workers)
    if n_workers == 1:
        return [table]
    return [table.take(np.flatnonzero(workers == w)) for w in range(n_workers)]


class RoundRobin:
    """Worker choice for sources without a key: 0, 1, ..., n-1, 0, ... (one per batch)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self, n_workers: int) -> int:
        """The next worker among `n_workers`."""
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        return next(self._counter) % n_workers
