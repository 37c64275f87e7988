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

Speed: hashes are computed by the numpy transcription of XXH3 in `laminardb.ingest.xxh3`
(bit-exact with the `xxhash` package, checked in the tests), so integer, float, string, binary
and composite keys are hashed without a Python loop, working on the Arrow buffers directly;
only values longer than 240 bytes, decimals and small columns (where numpy's fixed cost per
call would dominate) go through `xxhash` one value at a time. A string-like column whose
sample shows few distinct values, unless they are short and all of one length, is
dictionary-encoded first and only its distinct values are hashed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from laminardb.api.errors import SchemaError, codes
from laminardb.ingest.xxh3 import U64, digests, xxh3_binary, xxh3_fixed, xxh3_u64, xxh3_words

__all__ = [
    "N_VSHARDS",
    "RoundRobin",
    "key_digests",
    "split",
    "vshards",
    "worker_of",
    "xxh3_u64",
    "xxh3_words",
]

N_VSHARDS = 256
"""Virtual shards per source; upstream LaminarDB's cluster mode uses the same count."""

Mask = npt.NDArray[np.bool_]

_SAMPLE = 4096
"""Rows sampled to decide whether a string-like key column is worth dictionary-encoding."""

_FEW = 256
"""String-like columns of at most this many rows are hashed row by row without sampling."""

_COMBINE_BYTES = 64 << 20
"""A string-like column in small chunks below this size is made one chunk before hashing."""


def _each_value(values: pa.Array) -> U64:
    """xxh3_64 of every value of a string-like array, NULL slots included (masked later).

    Hashes the Arrow offsets and data buffers directly (no Python strings); the array's
    offset (a slice) is respected."""
    typ = values.type
    n = len(values)
    if pa.types.is_decimal(typ):
        texts = [b"" if v is None else str(v).encode("utf-8") for v in values.to_pylist()]
        return digests(texts, n)
    buffers = values.buffers()
    data = np.frombuffer(buffers[-1], np.uint8) if buffers[-1] is not None else _NO_BYTES
    if pa.types.is_fixed_size_binary(typ):
        width = typ.byte_width
        return xxh3_fixed(data, width, base=values.offset * width, count=n)
    large = pa.types.is_large_string(typ) or pa.types.is_large_binary(typ)
    offsets = np.frombuffer(buffers[1], np.int64) if large else np.frombuffer(buffers[1], np.int32)
    return xxh3_binary(offsets[values.offset : values.offset + n + 1], data)


_NO_BYTES = np.zeros(0, np.uint8)


def _varlen(arr: pa.ChunkedArray) -> U64:
    """Digests of a string-like column: of every row, or of its distinct values then looked
    up by index when a sample shows few distinct values and hashing every row costs more than
    Arrow's hash table (it costs about as much as hashing short values of one length, and
    less than hashing longer or mixed-length ones)."""
    if pa.types.is_string_view(arr.type) or pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_binary())
    n = len(arr)
    if n <= _FEW:
        return _concat([_each_value(chunk) for chunk in arr.chunks], n)
    if arr.num_chunks > 1 and n < arr.num_chunks * _SAMPLE and arr.nbytes < _COMBINE_BYTES:
        arr = pa.chunked_array([arr.combine_chunks()])  # many small chunks: one numpy pass
    step = n // _SAMPLE
    sample = arr.take(np.arange(0, n, step)) if step > 1 else arr  # every row: no copy
    # The cheap test first: counting distinct values costs more than the length check.
    if _short_and_even(sample) or pc.count_distinct(sample).as_py() * 4 > len(sample):
        return _concat([_each_value(chunk) for chunk in arr.chunks], n)
    encoded = pc.dictionary_encode(arr)
    table = _each_value(encoded.chunk(0).dictionary)
    return _concat([_take(table, chunk.indices) for chunk in encoded.chunks], n)


def _short_and_even(sample: pa.ChunkedArray) -> bool:
    """Whether the sample's values are binary or strings of one length of 16 bytes or less
    (hashed row by row faster than they are dictionary-encoded)."""
    if pa.types.is_decimal(sample.type):
        return False
    if pa.types.is_fixed_size_binary(sample.type):
        return bool(sample.type.byte_width <= 16)
    lengths = pc.min_max(pc.binary_length(sample)).as_py()
    return lengths["max"] is not None and lengths["min"] == lengths["max"] <= 16


def _concat(parts: list[U64], n: int) -> U64:
    if len(parts) == 1:
        return parts[0]
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
        table = digests([b"\x00", b"\x01"], 2)
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
    raw = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(-1)
    width = 8 * len(parts)
    return xxh3_binary(np.arange(len(words) + 1, dtype=np.intp) * width, raw), nulls


def vshards(table: pa.Table, keys: Sequence[str]) -> npt.NDArray[np.uint16]:
    """The virtual shard (0..255) of each row of `table` keyed by the columns `keys`."""
    hashes, nulls = key_digests(table, keys)
    shards = (hashes & np.uint64(N_VSHARDS - 1)).astype(np.uint16)
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
    if table.column(0).num_chunks > 1 and table.nbytes < _COMBINE_BYTES:
        table = table.combine_chunks()  # `take` costs per chunk
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
