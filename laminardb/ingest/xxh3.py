"""XXH3-64 (seed 0, default secret) in numpy, bit-exact with `xxhash.xxh3_64_intdigest`.

A transcription of the reference implementation's scalar paths (xxhash.h, v0.8): every
length class of input up to 240 bytes (0, 1-3, 4-8, 9-16, 17-128, 129-240) is computed for
many inputs at once with uint64 numpy arithmetic (wrapping modulo 2**64, as in C); inputs
longer than 240 bytes (the striped "long" path) go through `xxhash` one by one. The 128-bit
product of XXH3's `mul128_fold64` is assembled from 32-bit limbs.

Entry points:

- `xxh3_u64`: each value of a uint64 array taken as its 8 little-endian bytes;
- `xxh3_words`: each row of a (rows, k) uint64 matrix taken as 8*k little-endian bytes;
- `xxh3_binary`: each slice `data[offsets[i]:offsets[i + 1]]` of a byte buffer, i.e. the
  values of an Arrow string/binary array given its offsets and data buffers;
- `xxh3_fixed`: equal-width values stored back to back (fixed_size_binary, matrix rows).

Byte strings are hashed a block of `BLOCK` rows at a time. A block whose values all have one
length (or are empty, as NULL slots usually are) lies back to back in the buffer, so every
load is a strided view of it; otherwise the rows are grouped by length class and each load is
a fancy-indexed gather of overlapping fixed-size records (numpy void dtype). Either way a path
only reads bytes inside its input, as the C code does, so nothing past a value is touched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import xxhash

U64 = npt.NDArray[np.uint64]
Index = npt.NDArray[np.intp]
Bytes = npt.NDArray[np.uint8]

BLOCK = 1 << 13
"""Rows hashed per numpy pass. The temporaries of a block stay in cache, and at 64 KiB they
stay below glibc's mmap threshold (128 KiB), above which every temporary can cost a fresh
mmap and its page faults (several times slower)."""

_SECRET_BYTES = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
"""XXH3's default secret (kSecret, 192 bytes)."""

_MASK64 = (1 << 64) - 1


def _u(x: int) -> np.uint64:
    return np.uint64(x & _MASK64)


def _read64(offset: int) -> int:
    return int.from_bytes(_SECRET_BYTES[offset : offset + 8], "little")


def _read32(offset: int) -> int:
    return int.from_bytes(_SECRET_BYTES[offset : offset + 4], "little")


_KEYS = [_u(_read64(offset)) for offset in range(len(_SECRET_BYTES) - 7)]
"""The secret's little-endian 64-bit word at each byte offset (aligned or not)."""


_PRIME64_1 = 0x9E3779B185EBCA87
_PRIME64_2 = 0xC2B2AE3D27D4EB4F
_PRIME64_3 = 0x165667B19E3779F9
_PRIME_MX1 = 0x165667919E3779F9
_PRIME_MX2 = 0x9FB21C651E98DF25
_M32 = _u(0xFFFFFFFF)
_SHIFT = [_u(r) for r in range(65)]
"""Shift amounts as uint64 scalars (shifting a uint64 array by a Python int is fine on NumPy
2 but is not worth relying on)."""
_P64_1, _P64_2, _P64_3 = _u(_PRIME64_1), _u(_PRIME64_2), _u(_PRIME64_3)
_MX1, _MX2 = _u(_PRIME_MX1), _u(_PRIME_MX2)


def _xxh64_avalanche_int(h: int) -> int:
    h ^= h >> 33
    h = (h * _PRIME64_2) & _MASK64
    h ^= h >> 29
    h = (h * _PRIME64_3) & _MASK64
    return h ^ (h >> 32)


_EMPTY = _u(_xxh64_avalanche_int(_read64(56) ^ _read64(64)))
"""xxh3_64 of the empty input (XXH3_len_0to16_64b, len == 0)."""

_BITFLIP_1TO3 = _u(_read32(0) ^ _read32(4))
_BITFLIP_4TO8 = _u(_read64(8) ^ _read64(16))
_BITFLIP_9TO16_LO = _u(_read64(24) ^ _read64(32))
_BITFLIP_9TO16_HI = _u(_read64(40) ^ _read64(48))


# ------------------------------------------------------------------------- primitives


def _rotl(x: U64, r: int) -> U64:
    return (x << _SHIFT[r]) | (x >> _SHIFT[64 - r])


def _mul128_fold64(a: U64, b: U64) -> U64:
    """Low xor high half of the 128-bit products a*b (XXH3_mul128_fold64), the high half from
    32-bit limbs. Overwrites `a` and `b` (callers pass temporaries): in-place steps keep the
    number of live temporaries, and so the memory traffic, low."""
    low = a * b
    a_lo = a & _M32
    a >>= _SHIFT[32]  # a_hi
    hi_lo = b & _M32  # b_lo for now
    b >>= _SHIFT[32]  # b_hi
    cross = a_lo * hi_lo
    cross >>= _SHIFT[32]  # (a_lo * b_lo) >> 32
    np.multiply(a, hi_lo, out=hi_lo)  # a_hi * b_lo
    np.multiply(a_lo, b, out=a_lo)  # a_lo * b_hi
    np.multiply(a, b, out=a)  # a_hi * b_hi
    cross += np.bitwise_and(hi_lo, _M32, out=b)
    cross += a_lo  # < 2**64: no carry is lost
    cross >>= _SHIFT[32]
    hi_lo >>= _SHIFT[32]
    hi_lo += a
    hi_lo += cross  # the high half
    hi_lo ^= low
    return hi_lo


def _bswap(x: U64) -> U64:
    """Each value with its bytes reversed (ndarray.byteswap is several times slower)."""
    return x.view(x.dtype.newbyteorder()).astype(np.uint64)


def _avalanche(h: U64) -> U64:
    """XXH3_avalanche; updates `h` in place (callers pass a temporary)."""
    h ^= h >> _SHIFT[37]
    h *= _MX1
    h ^= h >> _SHIFT[32]
    return h


def _xxh64_avalanche(h: U64) -> U64:
    """XXH64_avalanche; updates `h` in place (callers pass a temporary)."""
    h ^= h >> _SHIFT[33]
    h *= _P64_2
    h ^= h >> _SHIFT[29]
    h *= _P64_3
    h ^= h >> _SHIFT[32]
    return h


def _rrmxmx(h: U64, length: U64 | np.uint64) -> U64:
    """XXH3_rrmxmx; updates `h` in place (callers pass a temporary)."""
    h ^= _rotl(h, 49) ^ _rotl(h, 24)
    h *= _MX2
    h ^= (h >> _SHIFT[35]) + length
    h *= _MX2
    h ^= h >> _SHIFT[28]
    return h


def _blockwise(f: Callable[[U64], U64], values: U64) -> U64:
    if len(values) <= BLOCK:
        return f(values)
    out = np.empty(len(values), np.uint64)
    for start in range(0, len(values), BLOCK):
        out[start : start + BLOCK] = f(values[start : start + BLOCK])
    return out


# ------------------------------------------------------------------------- fixed widths


def xxh3_u64(values: U64) -> U64:
    """xxh3_64 (seed 0) of each value's 8 little-endian bytes (XXH3_len_4to8_64b)."""
    return _blockwise(_xxh3_8, values)


def _xxh3_8(values: U64) -> U64:
    h = ((values >> _SHIFT[32]) | (values << _SHIFT[32])) ^ _BITFLIP_4TO8
    return _rrmxmx(h, _u(8))


def xxh3_words(words: U64) -> U64:
    """xxh3_64 (seed 0) of each row of a (rows, k) uint64 matrix taken as 8*k little-endian
    bytes, for 2 <= k <= 16 (XXH3_len_9to16_64b and XXH3_len_17to128_64b)."""
    if words.ndim != 2 or not 2 <= words.shape[1] <= 16:
        raise ValueError(f"xxh3_words handles 2..16 words, got shape {words.shape}")
    return _blockwise(_xxh3_words, words)


def _xxh3_words(words: U64) -> U64:
    k = words.shape[1]
    n = _u(8 * k)
    if k == 2:
        lo = words[:, 0] ^ _BITFLIP_9TO16_LO
        hi = words[:, 1] ^ _BITFLIP_9TO16_HI
        return _avalanche(n + _bswap(lo) + hi + _mul128_fold64(lo, hi))
    acc = np.full(len(words), _u(8 * k * _PRIME64_1), dtype=np.uint64)
    pairs = [(0, 0), (k - 2, 16)]
    if k > 4:
        pairs += [(2, 32), (k - 4, 48)]
    if k > 8:
        pairs += [(4, 64), (k - 6, 80)]
    if k > 12:
        pairs += [(6, 96), (k - 8, 112)]
    acc += _mixes(words, pairs)
    return _avalanche(acc)


# ------------------------------------------------------------------------- byte strings


class _Rows:
    """Little-endian loads from many inputs of one length class at once. `head(k)` and
    `tail(k)` are the first and last 8*k bytes of each input as a (count, k) uint64 matrix,
    `u8(at)` and `u32(at)` the 1 and 4 bytes `at` bytes into each input (`at` negative: from
    its end) as uint64. Paths only ask for bytes inside every input of their class."""

    count: int
    length: U64 | np.uint64
    """Each input's length (a scalar when all have the same length)."""

    def head(self, k: int) -> U64:
        raise NotImplementedError

    def tail(self, k: int) -> U64:
        raise NotImplementedError

    def u8(self, at: int) -> U64:
        raise NotImplementedError

    def u8_mid(self) -> U64:
        """The byte at `length // 2` of each input."""
        raise NotImplementedError

    def u32(self, at: int) -> U64:
        raise NotImplementedError


class _Buffer:
    """A byte buffer, padded to at least 8 bytes."""

    def __init__(self, data: Bytes) -> None:
        if len(data) < 8:
            data = np.concatenate([data, np.zeros(8, np.uint8)])
        self.data = data
        self._views: dict[int, npt.NDArray[np.void]] = {}

    def records(self, size: int) -> npt.NDArray[np.void]:
        """Overlapping `size`-byte records, record i starting at byte i (gathering records
        from it copies `size` bytes at arbitrary offsets in one fancy-indexing pass)."""
        view = self._views.get(size)
        if view is None:
            view = np.ndarray(
                (len(self.data) - size + 1,), np.dtype(f"V{size}"), self.data, 0, (1,)
            )
            self._views[size] = view
        return view


def _as_words(records: npt.NDArray[np.void], k: int) -> U64:
    return records.view(np.dtype("<u8")).reshape(len(records), k).astype(np.uint64, copy=False)


def _as_u32(records: npt.NDArray[np.void]) -> U64:
    return records.view(np.dtype("<u4")).astype(np.uint64)


class _Gathered(_Rows):
    """Inputs of any lengths at arbitrary offsets: each load is one fancy-indexed gather."""

    def __init__(self, buffer: _Buffer, starts: Index, lengths: Index) -> None:
        self.buffer, self.starts, self.lengths = buffer, starts, lengths
        self.ends = starts + lengths
        self.count = len(starts)
        self.length = lengths.view(np.uint64)

    def _at(self, at: int) -> Index:
        return self.starts + at if at >= 0 else self.ends + at

    def head(self, k: int) -> U64:
        return _as_words(self.buffer.records(8 * k)[self.starts], k)

    def tail(self, k: int) -> U64:
        return _as_words(self.buffer.records(8 * k)[self.ends - 8 * k], k)

    def u8(self, at: int) -> U64:
        return self.buffer.data[self._at(at)].astype(np.uint64)

    def u8_mid(self) -> U64:
        return self.buffer.data[self.starts + (self.lengths >> 1)].astype(np.uint64)

    def u32(self, at: int) -> U64:
        return _as_u32(self.buffer.records(4)[self._at(at)])


class _Strided(_Rows):
    """`count` inputs of `width` bytes each, back to back from byte `base`: loads are
    strided views (copying them is much faster than gathering)."""

    def __init__(self, buffer: _Buffer, base: int, width: int, count: int) -> None:
        self.data, self.base, self.width, self.count = buffer.data, base, width, count
        self.length = np.uint64(width)

    def _view(self, dtype: str, at: int, k: int = 1) -> npt.NDArray[np.generic]:
        offset = self.base + (at if at >= 0 else self.width + at)
        size = np.dtype(dtype).itemsize
        return np.ndarray((self.count, k), np.dtype(dtype), self.data, offset, (self.width, size))

    def head(self, k: int) -> U64:
        return self._view("<u8", 0, k).astype(np.uint64)

    def tail(self, k: int) -> U64:
        return self._view("<u8", -8 * k, k).astype(np.uint64)

    def u8(self, at: int) -> U64:
        return self._view("u1", at)[:, 0].astype(np.uint64)

    def u8_mid(self) -> U64:
        return self.u8(self.width >> 1)

    def u32(self, at: int) -> U64:
        return self._view("<u4", at)[:, 0].astype(np.uint64)


_Path = Callable[[_Rows], U64]


def _len_0(rows: _Rows) -> U64:
    return np.full(rows.count, _EMPTY, np.uint64)


def _len_1to3(rows: _Rows) -> U64:
    """XXH3_len_1to3_64b."""
    combined = (rows.u8(0) << _SHIFT[16]) | (rows.u8_mid() << _SHIFT[24]) | rows.u8(-1)
    combined |= rows.length << _SHIFT[8]
    return _xxh64_avalanche(combined ^ _BITFLIP_1TO3)


def _len_4to8(rows: _Rows) -> U64:
    """XXH3_len_4to8_64b."""
    keyed = (rows.u32(-4) + (rows.u32(0) << _SHIFT[32])) ^ _BITFLIP_4TO8
    return _rrmxmx(keyed, rows.length)


def _len_9to16(rows: _Rows) -> U64:
    """XXH3_len_9to16_64b."""
    lo = rows.head(1)[:, 0] ^ _BITFLIP_9TO16_LO
    hi = rows.tail(1)[:, 0] ^ _BITFLIP_9TO16_HI
    return _avalanche(rows.length + _bswap(lo) + hi + _mul128_fold64(lo, hi))


def _times_prime64_1(rows: _Rows) -> U64:
    """A new array of each input's length times PRIME64_1 (the 17..240-byte paths' start)."""
    if isinstance(rows.length, np.ndarray):
        return rows.length * _P64_1
    return np.full(rows.count, _u(int(rows.length) * _PRIME64_1), np.uint64)


def _mixes(words: U64, pairs: Sequence[tuple[int, int]]) -> U64:
    """Sum of XXH3_mix16B over `pairs` of (column, secret offset): the 16 input bytes in
    columns `column`, `column + 1` of `words`, with the secret's 16 bytes at `secret`.

    One pair at a time: every temporary is one column (64 KiB at most)."""
    total: U64 | None = None
    for column, secret in pairs:
        folded = _mul128_fold64(
            words[:, column] ^ _KEYS[secret], words[:, column + 1] ^ _KEYS[secret + 8]
        )
        if total is None:
            total = folded
        else:
            total += folded
    assert total is not None
    return total


def _len_17to128(rounds: int) -> _Path:
    """XXH3_len_17to128_64b for lengths 32*rounds-15 .. 32*rounds: the 16*rounds bytes at
    each end (which may overlap) mixed 16 at a time."""
    head_pairs = [(2 * i, 32 * i) for i in range(rounds)]
    tail_pairs = [(2 * (rounds - 1 - i), 32 * i + 16) for i in range(rounds)]

    def path(rows: _Rows) -> U64:
        acc = _times_prime64_1(rows)
        acc += _mixes(rows.head(2 * rounds), head_pairs)
        acc += _mixes(rows.tail(2 * rounds), tail_pairs)
        return _avalanche(acc)

    return path


def _len_129to240(rounds: int) -> _Path:
    """XXH3_len_129to240_64b for lengths 16*rounds .. 16*rounds+15 (8 <= rounds <= 15)."""
    first = [(2 * i, 16 * i) for i in range(8)]
    rest = [(2 * i, 16 * (i - 8) + 3) for i in range(8, rounds)]
    last = [(0, 136 - 17)]

    def path(rows: _Rows) -> U64:
        head = rows.head(2 * rounds)
        acc = _times_prime64_1(rows)
        acc += _mixes(head, first)
        acc = _avalanche(acc)
        acc += _mixes(rows.tail(2), last)
        if rest:
            acc += _mixes(head, rest)
        return _avalanche(acc)

    return path


_LONGEST = 240
"""Longest input hashed in numpy; longer ones go through `xxhash` (the striped long path)."""

_PATHS: list[_Path] = [
    _len_0,
    _len_1to3,
    _len_4to8,
    _len_9to16,
    *(_len_17to128(rounds) for rounds in range(1, 5)),
    *(_len_129to240(rounds) for rounds in range(8, 16)),
]
_LONG = len(_PATHS)
"""Class of the inputs longer than `_LONGEST`."""

_CLASS_OF_LENGTH = np.full(_LONGEST + 2, _LONG, np.uint8)
"""Index into `_PATHS` of each length 0..240; `_LONG` for longer ones (index 241)."""
_CLASS_OF_LENGTH[0] = 0
_CLASS_OF_LENGTH[1:4] = 1
_CLASS_OF_LENGTH[4:9] = 2
_CLASS_OF_LENGTH[9:17] = 3
for _length in range(17, 129):
    _CLASS_OF_LENGTH[_length] = 4 + (_length - 1) // 32
for _length in range(129, _LONGEST + 1):
    _CLASS_OF_LENGTH[_length] = _length // 16


_FEW = 128
"""Below this many inputs `xxhash` one by one beats numpy's fixed cost per call."""


def xxh3_binary(offsets: npt.NDArray[np.integer], data: Bytes) -> U64:
    """xxh3_64 (seed 0) of each byte string `data[offsets[i]:offsets[i + 1]]`.

    `offsets` (n + 1 non-decreasing positions within `data`) and `data` are an Arrow
    string/binary array's offsets (sliced to the array's offset and length) and data
    buffers."""
    n = len(offsets) - 1
    if n < _FEW:
        bounds = offsets.tolist()
        view = memoryview(data.data)
        return digests((view[i:j] for i, j in itertools.pairwise(bounds)), max(n, 0))
    out = np.empty(n, np.uint64)
    buffer = _Buffer(data)
    for start in range(0, n, BLOCK):
        bounds = offsets[start : start + BLOCK + 1].astype(np.intp, copy=False)
        out[start : start + len(bounds) - 1] = _hash_block(buffer, bounds)
    return out


def xxh3_fixed(data: Bytes, width: int, base: int = 0, count: int | None = None) -> U64:
    """xxh3_64 (seed 0) of `count` byte strings of `width` bytes each, stored back to back in
    `data` from byte `base` (all of `data` by default): a fixed_size_binary array's buffer or
    the rows of a C-contiguous uint8 matrix."""
    if count is None:
        count = (len(data) - base) // width if width else 0
    out = np.empty(count, np.uint64)
    if count == 0:
        return out
    buffer = _Buffer(data)
    for start in range(0, count, BLOCK):
        rows = min(BLOCK, count - start)
        out[start : start + rows] = _hash_same_length(buffer, base + start * width, width, rows)
    return out


def _hash_same_length(buffer: _Buffer, base: int, width: int, count: int) -> U64:
    cls = int(_CLASS_OF_LENGTH[min(width, _LONGEST + 1)])
    if cls == _LONG:
        starts = base + width * np.arange(count, dtype=np.intp)
        return _long(buffer, starts, np.full(count, width, np.intp))
    return _PATHS[cls](_Strided(buffer, base, width, count))


def _hash_block(buffer: _Buffer, bounds: Index) -> U64:
    starts = bounds[:-1]
    lengths = bounds[1:] - starts
    longest = int(lengths.max())
    same = int(np.count_nonzero(lengths == longest))
    if same == len(lengths):
        return _hash_same_length(buffer, int(starts[0]), longest, len(starts))
    if same + np.count_nonzero(lengths == 0) == len(lengths):
        # Values of one length and empty ones (typically NULL slots): the former are still
        # back to back in `data`.
        out = np.full(len(starts), _EMPTY, np.uint64)
        filled = np.flatnonzero(lengths)
        out[filled] = _hash_same_length(buffer, int(starts[filled[0]]), longest, same)
        return out
    classes = _CLASS_OF_LENGTH[np.minimum(lengths, _LONGEST + 1)]
    counts = np.bincount(classes, minlength=_LONG + 1)
    if counts.max() == len(classes) and classes[0] != _LONG:
        return _PATHS[int(classes[0])](_Gathered(buffer, starts, lengths))
    out = np.empty(len(starts), np.uint64)
    for cls in np.flatnonzero(counts).tolist():
        which = np.flatnonzero(classes == cls)
        if cls == _LONG:
            out[which] = _long(buffer, starts[which], lengths[which])
        else:
            out[which] = _PATHS[cls](_Gathered(buffer, starts[which], lengths[which]))
    return out


def _long(buffer: _Buffer, starts: Index, lengths: Index) -> U64:
    """Inputs over 240 bytes: `xxhash` one by one."""
    view = memoryview(buffer.data.data)
    return digests(
        (view[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)),
        len(starts),
    )


def digests(items: Iterable[bytes | memoryview], count: int) -> U64:
    """xxh3_64 of each of `count` byte strings, one `xxhash` call each."""
    return np.fromiter(map(xxhash.xxh3_64_intdigest, items), dtype=np.uint64, count=count)
