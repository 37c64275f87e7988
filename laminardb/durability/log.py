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

Fsync policy: every record is written to the operating system as soon as it is appended
(so it survives the death of this process, `kill -9` included), and the file is fsynced by
`checkpoint()` and `close()` (so what was checkpointed also survives a machine crash).

A lock file (`path/LOCK`, `flock` exclusive, non-blocking) keeps a second live process from
opening the same database; the kernel releases it when the holder exits, however it exits.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa

from laminardb.api.errors import ConnectionError
from laminardb.wire import arrow_ipc

log = logging.getLogger("laminardb.durability")

MAGIC = b"LDBR"
HEADER = struct.Struct("<4sBHQI")
LOG_NAME = "log"
LOCK_NAME = "LOCK"


class RecordType(enum.IntEnum):
    DDL = 1
    BATCH = 2


@dataclass(frozen=True)
class Record:
    """One intact log record: a statement (`sql`) or a batch of rows for `source`."""

    type: RecordType
    source: str
    payload: bytes

    @property
    def sql(self) -> str:
        return self.payload.decode("utf-8")

    def table(self) -> pa.Table:
        return arrow_ipc.loads(self.payload)


def is_persistent(path: str | os.PathLike[str] | None) -> bool:
    """True when `path` names a directory to persist in (anything but "" or ":memory:")."""
    return path is not None and os.fspath(path) not in ("", ":memory:")


def _crc(kind: int, name: bytes, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(name, zlib.crc32(bytes([kind])))) & 0xFFFFFFFF


def encode(kind: RecordType, source: str, payload: bytes | memoryview) -> bytes:
    """The bytes of one record."""
    name = source.encode("utf-8")
    header = HEADER.pack(MAGIC, int(kind), len(name), len(payload), _crc(kind, name, payload))
    return header + name + bytes(payload)


class Log:
    """The lock and the log file of one database directory; open until `close()`."""

    def __init__(self, path: str | os.PathLike[str]):
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
        self._file: BinaryIO | None = None
        self.dropped_bytes = 0
        self.dropped_records = 0

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0

    def replay(self) -> Iterator[Record]:
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
            good = end
            offset = end
            yield record
        if self.dropped_bytes:
            with open(self.file_path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self._open_for_append()

    def restore(
        self, execute: Callable[[str], object], ship: Callable[[str, pa.Table], object]
    ) -> int:
        """Replay every intact record in order: statements to `execute`, batches to `ship`.

        Returns the number of records replayed. The caller makes sure neither callback logs
        the record again.
        """
        count = 0
        for record in self.replay():
            if record.type is RecordType.DDL:
                execute(record.sql)
            else:
                ship(record.source, record.table())
            count += 1
        return count

    def _open_for_append(self) -> None:
        if self._file is None:
            self._file = open(self.file_path, "ab")  # noqa: SIM115 - held until close()

    def _require_open(self) -> None:
        if self.closed:
            raise ConnectionError(f"log {self.dir} is closed")

    def _append(self, kind: RecordType, source: str, payload: bytes | memoryview) -> None:
        self._require_open()
        self._open_for_append()
        assert self._file is not None
        self._file.write(encode(kind, source, payload))
        self._file.flush()  # to the OS: survives the death of this process

    def append_ddl(self, sql: str) -> None:
        """Log a statement that changed the catalog or a table."""
        self._append(RecordType.DDL, "", sql.encode("utf-8"))

    def append_batch(self, source: str, table: pa.Table) -> None:
        """Log rows that were shipped to the workers of `source`."""
        self._append(RecordType.BATCH, source, memoryview(arrow_ipc.dumps(table)))

    def checkpoint(self) -> None:
        """Make every appended record durable (flush + fsync)."""
        self._require_open()
        self._open_for_append()
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Fsync the log and release the lock; safe to call twice."""
        if self.closed:
            return
        try:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _decode_at(data: bytes, offset: int) -> tuple[Record | None, int, str]:
    """The record at `offset` and where it ends, or (None, offset, what is wrong)."""
    if len(data) - offset < HEADER.size:
        return None, offset, "torn record header"
    magic, kind, name_len, payload_len, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return None, offset, "bad record magic"
    if kind not in (RecordType.DDL, RecordType.BATCH):
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
