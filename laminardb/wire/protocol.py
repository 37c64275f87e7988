"""Control messages between the coordinator and its workers (msgspec over ZeroMQ).

Every message is a tagged msgspec struct in one msgpack frame; Arrow data never travels in
it: inserts point into the worker's shared-memory arena, and results follow as extra frames
of Arrow IPC. A worker greets with its protocol version and is refused on a mismatch.
"""

from __future__ import annotations

from typing import Any

import msgspec

PROTOCOL_VERSION = 1


class Hello(msgspec.Struct, tag=True):
    """A worker is up, attached to its arena and ready for requests."""

    version: int
    shard: int
    pid: int


class Execute(msgspec.Struct, tag=True):
    """Run one statement (DDL or DML) on the engine; `kind` is the coordinator's class of it."""

    rid: int
    sql: str
    kind: str
    name: str | None = None


class Query(msgspec.Struct, tag=True):
    """Run a SELECT; the reply carries the result as one Arrow IPC stream frame."""

    rid: int
    sql: str


class Stage(msgspec.Struct, tag=True):
    """Copy one Arrow IPC stream into the worker's memory, under `txn`.

    The stream lies in the worker's arena at `offset`, or, when `inline` (a row too big
    for the arena), in the message's second frame.
    """

    rid: int
    txn: int
    source: str
    offset: int
    length: int
    inline: bool = False


class Commit(msgspec.Struct, tag=True):
    """Insert everything staged under `txn` into the engine, one batch per source."""

    rid: int
    txn: int


class Abort(msgspec.Struct, tag=True):
    """Forget everything staged under `txn`."""

    rid: int
    txn: int


class Call(msgspec.Struct, tag=True):
    """Call a read-only engine method (catalog, metrics) and return plain values."""

    rid: int
    method: str
    args: list[Any] = []


class Shutdown(msgspec.Struct, tag=True):
    """Close the engine and exit."""

    rid: int


class ErrorInfo(msgspec.Struct):
    """An exception raised on a worker: class name, message and native code."""

    kind: str
    message: str
    code: int | None = None


class Reply(msgspec.Struct, tag=True):
    """The answer to request `rid`; `value` is plain data, `error` set when it failed."""

    rid: int
    value: Any = None
    error: ErrorInfo | None = None


Request = Execute | Query | Stage | Commit | Abort | Call | Shutdown
ToWorker = Request
FromWorker = Hello | Reply

_encoder = msgspec.msgpack.Encoder()
_to_worker: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(ToWorker)
_from_worker: msgspec.msgpack.Decoder[Hello | Reply] = msgspec.msgpack.Decoder(FromWorker)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_request(data: bytes | memoryview) -> Request:
    return _to_worker.decode(data)


def decode_reply(data: bytes | memoryview) -> Hello | Reply:
    return _from_worker.decode(data)
