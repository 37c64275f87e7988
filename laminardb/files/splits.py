"""Which files a load reads, and how they are cut into one share of work per worker.

A Parquet file is cut at row-group boundaries, an uncompressed CSV or NDJSON file into byte
ranges that start and end on line boundaries (for CSV, outside quoted values, which may hold
line breaks), a compressed file or a JSON array stays whole. Shares are balanced by rows (Parquet) or bytes,
and each worker gets few, large pieces: the engine prefers few big batches.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from laminardb.api.errors import IngestionError, codes
from laminardb.files.options import FileOptions, compression_of
from laminardb.wire.protocol import FileSplit

_SCAN = 1 << 16
_QUOTE = ord('"')
_COUNT_STEP = 16 << 20
MIN_SPLIT_BYTES = 1 << 20
"""A text file is cut only into pieces at least this big (smaller ones are not worth a worker)."""

MIN_SPLIT_ROWS = 65_536
"""Smaller Parquet row groups are read together, up to this many rows a split: a split costs
a task, a reply message and (in each worker, once per file) a read of the file's footer."""


def load_error(table: str, message: str) -> IngestionError:
    return IngestionError(
        f"Ingestion failed ({codes.INGESTION_FAILED}): table '{table}': {message}",
        code=codes.INGESTION_FAILED,
    )


def expand(pattern: str, table: str) -> list[str]:
    """The files a path, folder or glob names, sorted; an error when there are none."""
    if glob.has_magic(pattern):
        paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise load_error(table, f"no file matches {pattern!r}")
        return paths
    if os.path.isdir(pattern):
        paths = sorted(
            os.path.join(pattern, n)
            for n in os.listdir(pattern)
            if not n.startswith((".", "_")) and os.path.isfile(os.path.join(pattern, n))
        )
        if not paths:
            raise load_error(table, f"folder {pattern!r} holds no file")
        return paths
    if not os.path.exists(pattern):
        raise load_error(table, f"file not found: {pattern!r}")
    if not os.access(pattern, os.R_OK):
        raise load_error(table, f"file {pattern!r} is not readable")
    return [pattern]


def plan(
    paths: list[str], opts: FileOptions, workers: int, table: str, per_worker: int = 1
) -> list[list[FileSplit]]:
    """One list of splits per worker (some may be empty); a text file is cut into up to
    `per_worker` pieces a worker (its cores: it reads them at once, one thread each)."""
    if opts.format == "parquet":
        units = list(_parquet_units(paths, table))
    else:
        units = list(_text_units(paths, opts, workers * max(1, per_worker), table))
    return _assign(units, workers)


def _parquet_units(paths: list[str], table: str) -> Iterator[tuple[FileSplit, int]]:
    for path in paths:
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            raise load_error(
                table, f"file {path!r} is not a readable Parquet file: {exc}"
            ) from None
        for group in range(meta.num_row_groups):
            yield FileSplit(path, row_groups=[group]), meta.row_group(group).num_rows


def _text_units(
    paths: list[str], opts: FileOptions, pieces_max: int, table: str
) -> Iterator[tuple[FileSplit, int]]:
    sizes = {p: os.path.getsize(p) for p in paths}
    target = max(MIN_SPLIT_BYTES, -(-sum(sizes.values()) // max(1, pieces_max)))
    for path in paths:
        size = sizes[path]
        names = _header(path, opts, table) if opts.format == "csv" and opts.header else []
        if compression_of(path) is not None or (opts.format == "json" and _is_array(path)):
            yield FileSplit(path, 0, -1, names=names), size
            continue
        pieces = max(1, min(pieces_max, -(-size // target)))
        if pieces == 1:  # whole: quoted values may then hold line breaks
            yield FileSplit(path, 0, -1, names=names), size
            continue
        bounds = _line_bounds(path, size, pieces, quoted=opts.format == "csv")
        for start, end in itertools.pairwise(bounds):
            if end > start:
                yield FileSplit(path, start, end, names=names), end - start


def _assign(units: list[tuple[FileSplit, int]], workers: int) -> list[list[FileSplit]]:
    """Largest first onto the least loaded worker; Parquet row groups in contiguous runs,
    a split for each row group of at least `MIN_SPLIT_ROWS` rows and for each run of smaller
    ones that reaches it (a worker reads its splits at once and reports each as it is read:
    the load's progress)."""
    shares: list[list[FileSplit]] = [[] for _ in range(workers)]
    load = [0] * workers
    if units and all(u[0].row_groups for u in units):
        total = sum(w for _, w in units)
        before = 0
        rows = [0] * workers  # rows in each worker's last split
        for unit, weight in units:
            shard = min(workers - 1, before * workers // max(1, total))
            share = shares[shard]
            if share and share[-1].path == unit.path and rows[shard] < MIN_SPLIT_ROWS:
                share[-1].row_groups.extend(unit.row_groups)
                rows[shard] += weight
            else:
                share.append(FileSplit(unit.path, row_groups=list(unit.row_groups)))
                rows[shard] = weight
            before += weight
        return shares
    for unit, weight in sorted(units, key=lambda u: -u[1]):
        shard = load.index(min(load))
        shares[shard].append(unit)
        load[shard] += weight
    return shares


def _line_bounds(path: str, size: int, pieces: int, quoted: bool) -> list[int]:
    """`pieces + 1` offsets from 0 to `size`, each inner one just after a line break.

    With `quoted` (CSV), a line break only counts where an even number of `"` precede it:
    quotes inside a quoted value are doubled (RFC 4180), so an odd count means the break is
    inside a quoted value and the cut moves on to the next line break. The quotes before
    each nominal cut are counted on threads first (the count is the whole file's one pass;
    numpy releases the GIL), so only the few bytes from a nominal cut to its line break are
    counted on the way.
    """
    targets = [size * i // pieces for i in range(1, pieces)]
    bounds = [0]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        data = np.frombuffer(mm, dtype=np.uint8)
        before = _quotes_before(data, targets) if quoted else []
        quotes = counted = 0
        for i, target in enumerate(targets):
            pos = max(bounds[-1], target)
            if quoted and counted <= target:
                quotes, counted, pos = before[i], target, target
            while True:
                nl = mm.find(b"\n", pos)
                if nl < 0:
                    pos = size
                    break
                pos = nl + 1
                if not quoted:
                    break
                quotes += _count_quotes(data, counted, pos)
                counted = pos
                if quotes % 2 == 0:
                    break
            bounds.append(pos)
        del data  # the mapping cannot close while a view of it exists
    bounds.append(size)
    return bounds


def _quotes_before(data: npt.NDArray[np.uint8], targets: list[int]) -> list[int]:
    """The number of `"` in `data[:t]` for each of the ascending offsets `targets`."""
    edges = [0, *targets]
    ranges = list(itertools.pairwise(edges))
    threads = max(1, min(len(ranges), os.cpu_count() or 1))
    if threads == 1 or data.size < _COUNT_STEP:
        counts = [_count_quotes(data, lo, hi) for lo, hi in ranges]
    else:
        with ThreadPoolExecutor(threads) as pool:
            counts = list(pool.map(lambda r: _count_quotes(data, *r), ranges))
    return [int(c) for c in itertools.accumulate(counts)]


def _count_quotes(data: npt.NDArray[np.uint8], start: int, end: int) -> int:
    total = 0
    for lo in range(start, end, _COUNT_STEP):
        total += int(np.count_nonzero(data[lo : min(end, lo + _COUNT_STEP)] == _QUOTE))
    return total


def _header(path: str, opts: FileOptions, table: str) -> list[str]:
    """The column names of a CSV file's first line."""
    try:
        with pa.input_stream(path, compression="detect") as f:
            head = b""
            while b"\n" not in head:
                chunk = f.read(_SCAN)
                if not chunk:
                    break
                head += chunk
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise load_error(table, f"cannot read file {path!r}: {exc}") from None
    try:
        line = head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise load_error(table, f"file {path!r}: the CSV header is not valid UTF-8") from None
    return next(csv.reader(io.StringIO(line), delimiter=opts.delimiter), [])


def _is_array(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(_SCAN).lstrip()[:1] == b"["
