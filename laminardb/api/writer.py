"""`Writer`: the native streaming writer, buffered and routed by the coordinator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self

import pyarrow as pa

from laminardb.api.args import signed_arg
from laminardb.api.errors import IngestionError, codes

if TYPE_CHECKING:
    from laminardb.api.connection import Connection

MIN_WATERMARK = -(2**63)


class _Inserter(Protocol):
    def insert(self, table: str, data: Any) -> int: ...


def timestamp_arg(value: object) -> int:
    """`value` as the 64-bit timestamp `Writer.watermark` takes; the native TypeError for
    anything else (a float is not truncated, a string not parsed)."""
    return signed_arg("timestamp", value)


class WriterBase:
    """What every writer shares: one source, its schema, the watermark seen, closing; the
    in-process `Writer` and the service client's writer differ only in where flush and
    watermark go."""

    def __init__(self, conn: _Inserter, name: str, schema: pa.Schema):
        self._inserter = conn
        self._name = name
        self._schema = schema
        self._closed = False
        self._watermark = MIN_WATERMARK

    @property
    def name(self) -> str:
        return self._name

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def current_watermark(self) -> int:
        return self._watermark

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Writer(closed)" if self._closed else f"Writer(source='{self._name}', open)"

    def _check(self) -> None:
        if self._closed:
            raise IngestionError("Writer is closed", code=codes.WRITER_CLOSED)

    def insert(self, data: Any) -> None:
        self._check()
        self._inserter.insert(self._name, data)

    def flush(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Writer(WriterBase):
    """Inserts into one source; rows are coalesced and shipped like `Connection.insert`."""

    def __init__(self, conn: Connection, name: str, schema: pa.Schema):
        super().__init__(conn, name, schema)
        self._conn = conn

    def flush(self) -> int:
        """Ship what is buffered for this source now; returns the rows shipped."""
        self._check()
        with self._conn._lock:
            self._conn._check()
            return self._conn._flush(self._name)

    @property
    def current_watermark(self) -> int:
        """The source's watermark, as native reports it: the highest of those set through this
        writer and the cluster watermark that inserts moved (max event time minus delay)."""
        if self._conn._state != "Running":  # before start() only watermark() moves it,
            with self._conn._lock:  # set through any writer, or replayed from the log
                self._conn._check()
                return max(self._watermark, self._conn._streams.workers_watermark(self._name))
        clock = self._conn._streams.source_watermark(self._name)
        return self._watermark if clock is None else max(self._watermark, clock)

    def watermark(self, timestamp: int) -> None:
        """Advance the source watermark on every worker (after shipping buffered rows) and in
        the coordinator's cluster clock, so merged windows close and late rows are judged as
        one native instance does after the same call."""
        timestamp = timestamp_arg(timestamp)
        self._check()
        with self._conn._lock:
            self._conn._check()
            self._conn._flush(self._name)
            with self._conn._recovery.watermark(self._name, timestamp):  # logged first
                marks = self._conn._broadcast_call("watermark", [self._name, timestamp])
            self._conn._streams.advance_watermark(self._name, timestamp, self._conn._catalog)
            self._watermark = max([self._watermark, *marks])

    def close(self) -> None:
        if not self._closed:
            if not self._conn._cluster.closed:
                self.flush()
            self._closed = True
