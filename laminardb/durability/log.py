"""An append-only, checksummed log of everything a persistent database was told to keep.

`open(path)` keeps a log in `path/log`: one record per catalog statement (its SQL text) and
one per batch of rows shipped to the workers (an Arrow IPC stream). Reopening replays it in
order, so the same statements and the same rows reach the (possibly differently sized)
cluster again and the same queries give the same answers.

Record layout (little endian)::

    magic b"LDBR" | type u8 | name length u16 | payload length u64 | crc32 u32
    name (utf-8, the source of a batch; empty for a statement) | payload

The CRC32 covers type, name and payload, so a torn write (a crash mid-record) or a flipped
byte is detected; replay keeps every record before the first bad one, truncates the file
there and reports what it dropped.

Each record appended or replayed is also indexed in memory (`refs`: offset, kind, source
and where its rows went), so that a worker that died can be rebuilt from the log alone
(laminardb/cluster/recovery.py).

A failed write (a full disk: ENOSPC) cuts the file back to the end of the last whole record
and raises `IngestionError` naming the log and the source; since batches are logged before
any worker commits them, the insert that failed is applied nowhere and nothing acknowledged
before it is touched.

Fsync policy (`durability`): with "buffered" (the default) every record is written to the
operating system as soon as it is appended (so it survives the death of this process,
`kill -9` included), and the file is fsynced by `checkpoint()` and `close()` (so what was
checkpointed also survives a machine crash). With "sync" every record is also fsynced
(fdatasync) before `append_*` returns, and the router ships each insert at once
(laminardb/cluster/recovery.py), so an insert returns only once its rows survive a machine
crash.

A lock file (`path/LOCK`, `flock` exclusive, non-blocking) keeps a second live process from
opening the same database; the kernel releases it when the holder exits, however it exits.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from laminardb.api.errors import ConnectionError, IngestionError, codes
from laminardb.wire import arrow_ipc

log = logging.getLogger("laminardb.durability")

_write = os.write  # the one write of the log (tests put a full disk here)
MAGIC = b"LDBR"
HEADER = struct.Struct("<4sBHQI")
LOG_NAME = "log"
LOCK_NAME = "LOCK"
COMPACT_NAME = "log.compact"  # a compacted log being written (laminardb/durability/compact.py)


class RecordType(enum.IntEnum):
    DDL = 1
    BATCH = 2
    WATERMARK = 3  # a watermark set on a source (payload: the timestamp, int64 LE)


WATERMARK = struct.Struct("<q")


@dataclass(frozen=True)
class Record:
    """One intact log record: a statement (`sql`) or a batch of rows for `source`."""

    type: RecordType
    source: str
    payload: bytes

    @property
    def sql(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def watermark(self) -> int:
        return int(WATERMARK.unpack(self.payload)[0])

    def table(self) -> pa.Table:
        return arrow_ipc.loads(self.payload)


@dataclass
class RecordRef:
    """Where one intact record lies in the log; `placement` says which workers got a batch
    in this session (set by the router when the batch is shipped; None for a statement)."""

    offset: int
    type: RecordType
    source: str
    placement: Any = None


def is_persistent(path: str | os.PathLike[str] | None) -> bool:
    """True when `path` names a directory to persist in (anything but "" or ":memory:")."""
    return path is not None and os.fspath(path) not in ("", ":memory:")


def _crc(kind: int, name: bytes, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(name, zlib.crc32(bytes([kind])))) & 0xFFFFFFFF


def encode(kind: RecordType, source: str, payload: bytes | memoryview) -> bytes:
    """The bytes of one record."""
    return encode_head(kind, source, payload) + bytes(payload)


def encode_head(kind: RecordType, source: str, payload: bytes | memoryview) -> bytes:
    """The header and name of one record (the payload follows them as is)."""
    name = source.encode("utf-8")
    return HEADER.pack(MAGIC, int(kind), len(name), len(payload), _crc(kind, name, payload)) + name


DURABILITY = ("buffered", "sync")  # see the module docstring


def check_durability(mode: str) -> str:
    """`mode` if it is one of DURABILITY, else ValueError naming the choices."""
    if mode not in DURABILITY:
        raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, got {mode!r}")
    return mode


class Log:
    """The lock and the log file of one database directory; open until `close()`."""

    durability = "buffered"  # "sync": fsync every record before append_* returns

    def __init__(self, path: str | os.PathLike[str], *, temporary: bool = False):
        # temporary: a private log of an in-memory database, kept only so that a worker that
        # died can be rebuilt; the folder is removed by `close()`.
        self.temporary = temporary
        self.dir = os.path.abspath(os.fspath(path))
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise ConnectionError(f"cannot create database directory {self.dir}: {exc}") from exc
        self._lock_fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConnectionError(
                f"database {self.dir} is in use by another open connection or process "
                f"(lock {os.path.join(self.dir, LOCK_NAME)} is held)"
            ) from None
        self.file_path = os.path.join(self.dir, LOG_NAME)
        with contextlib.suppress(FileNotFoundError):  # a compaction that crashed before its rename
            os.unlink(os.path.join(self.dir, COMPACT_NAME))
        self._fd = -1  # append descriptor, opened once replay is done
        self._end = 0  # bytes of whole records in the file
        self.refs: list[RecordRef] = []
        self.dropped_bytes = 0
        self.dropped_records = 0

    @classmethod
    def private(cls) -> Log:
        """A temporary, empty log in a private folder (an in-memory database's recovery log)."""
        path = tempfile.mkdtemp(prefix=f"laminardb-{os.getpid()}-log-")
        try:
            log_ = cls(path, temporary=True)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        log_._open_for_append()
        return log_

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0

    def replay(self) -> Iterator[Record]:
        """Every intact record in order (see `replay_refs`)."""
        for _, record in self.replay_refs():
            yield record

    def replay_refs(self) -> Iterator[tuple[RecordRef, Record]]:
        """Every intact record in order; at the first bad one, truncate the log and stop.

        What was dropped is logged as a warning and kept in `dropped_bytes` and
        `dropped_records` (0 or 1: everything after a bad record is counted as one, since
        its bounds cannot be trusted). The log is open for appending once this is exhausted.
        """
        self._require_open()
        good = 0
        with open(self.file_path, "a+b") as f:
            f.seek(0)
            data = f.read()
        offset = 0
        while offset < len(data):
            record, end, problem = _decode_at(data, offset)
            if record is None:
                self.dropped_bytes = len(data) - offset
                self.dropped_records = 1
                log.warning(
                    "log %s: %s at byte %d; dropping the last %d bytes "
                    "(everything up to the last intact record is kept)",
                    self.file_path,
                    problem,
                    offset,
                    self.dropped_bytes,
                )
                break
            ref = RecordRef(offset, record.type, record.source)
            self.refs.append(ref)
            good = end
            offset = end
            yield ref, record
        if self.dropped_bytes:
            with open(self.file_path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self._end = good
        self._open_for_append()

    def restore(
        self, execute: Callable[[str], object], ship: Callable[[str, pa.Table], object]
    ) -> int:
        """Replay every intact record in order: statements to `execute`, batches to `ship`
        (watermarks are skipped: the connection's restore in recovery.py applies them).

        Returns the number of records replayed. The caller makes sure neither callback logs
        the record again.
        """
        count = 0
        for record in self.replay():
            if record.type is RecordType.DDL:
                execute(record.sql)
            elif record.type is RecordType.BATCH:
                ship(record.source, record.table())
            count += 1
        return count

    def _open_for_append(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self.file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._end = os.fstat(self._fd).st_size

    def _require_open(self) -> None:
        if self.closed:
            raise ConnectionError(f"log {self.dir} is closed")

    def _append(self, kind: RecordType, source: str, payload: bytes | memoryview) -> RecordRef:
        self._require_open()
        self._open_for_append()
        head = encode_head(kind, source, payload)
        start, size = self._end, len(head) + len(payload)
        try:
            for part in (memoryview(head), memoryview(payload)):  # no copy of the payload
                while part:
                    # to the OS at once: the record survives the death of this process
                    part = part[_write(self._fd, part) :]
            if self.durability == "sync" and not self.temporary:
                os.fdatasync(self._fd)  # durable before the call returns
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no torn record stays behind
            what = {
                RecordType.BATCH: f"rows of source {source}",
                RecordType.WATERMARK: f"a watermark of source {source}",
            }.get(kind, "a statement")
            raise IngestionError(
                f"cannot log {what} to {self.file_path}: {exc.strerror or exc} "
                f"(errno {exc.errno}); nothing of this call was applied, "
                "everything acknowledged before it is kept",
                code=codes.INGESTION_FAILED,
            ) from exc
        self._end = start + size
        ref = RecordRef(start, kind, source)
        self.refs.append(ref)
        return ref

    def append_ddl(self, sql: str) -> RecordRef:
        """Log a statement that changed the catalog or a table."""
        return self._append(RecordType.DDL, "", sql.encode("utf-8"))

    def append_watermark(self, source: str, timestamp: int) -> RecordRef:
        """Log a watermark set on `source` (replayed in its place among the rows)."""
        return self._append(RecordType.WATERMARK, source, WATERMARK.pack(int(timestamp)))

    def append_batch(self, source: str, table: pa.Table, placement: Any = None) -> RecordRef:
        """Log rows about to be committed to the workers of `source`."""
        ref = self._append(RecordType.BATCH, source, memoryview(arrow_ipc.dumps(table)))
        ref.placement = placement
        return ref

    def retract(self, ref: RecordRef) -> None:
        """Cut the log back to before `ref` (the last record: its statement or batch failed)."""
        self._require_open()
        if not self.refs or self.refs[-1] is not ref:
            raise ValueError("only the last record can be retracted")
        os.ftruncate(self._fd, ref.offset)
        self._end = ref.offset
        self.refs.pop()

    def read(self, refs: list[RecordRef]) -> Iterator[tuple[RecordRef, Record]]:
        """The records at `refs`, read back from the file (checksums verified again)."""
        self._require_open()
        with open(self.file_path, "rb") as f:
            for ref in refs:
                f.seek(ref.offset)
                header = f.read(HEADER.size)
                _, _, name_len, payload_len, _ = HEADER.unpack(header)
                data = header + f.read(name_len + payload_len)
                record, _, problem = _decode_at(data, 0)
                if record is None:
                    raise ConnectionError(f"log {self.file_path}: {problem} at byte {ref.offset}")
                yield ref, record

    @property
    def size(self) -> int:
        """Bytes of whole records in the log."""
        return self._end

    def adopt(self, refs: list[RecordRef], end: int) -> None:
        """Take the file now at `file_path` (a compacted log: laminardb/durability/compact.py)
        as this log, with its records at `refs` and `end` bytes long."""
        self._require_open()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._open_for_append()
        self.refs = refs
        self._end = end

    def checkpoint(self, compact: bool = True) -> None:
        """Make every appended record durable (fsync); `compact`: first rewrite the log without
        what can never matter again, when that saves at least COMPACT_MIN_SAVING of it."""
        self._require_open()
        self._open_for_append()
        if compact and self.refs:
            from laminardb.durability import compact as compaction  # it imports this module

            compaction.maybe_run(self)
        if not self.temporary:
            os.fsync(self._fd)

    def close(self) -> None:
        """Fsync the log and release the lock (a temporary log is removed); safe to call twice."""
        if self.closed:
            return
        try:
            if self._fd >= 0:
                if not self.temporary:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
            if self.temporary:
                shutil.rmtree(self.dir, ignore_errors=True)


def _decode_at(data: bytes, offset: int) -> tuple[Record | None, int, str]:
    """The record at `offset` and where it ends, or (None, offset, what is wrong)."""
    if len(data) - offset < HEADER.size:
        return None, offset, "torn record header"
    magic, kind, name_len, payload_len, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return None, offset, "bad record magic"
    if kind not in iter(RecordType):
        return None, offset, f"unknown record type {kind}"
    start = offset + HEADER.size
    end = start + name_len + payload_len
    if end > len(data):
        return None, offset, "torn record"
    name = data[start : start + name_len]
    payload = data[start + name_len : end]
    if _crc(kind, name, payload) != crc:
        return None, offset, "checksum mismatch"
    try:
        source = name.decode("utf-8")
    except UnicodeDecodeError:
        return None, offset, "bad source name"
    return Record(RecordType(kind), source, payload), end, ""
