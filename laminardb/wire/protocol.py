"""Control messages between the coordinator and its workers (msgspec over ZeroMQ).

Every message is a tagged msgspec struct in one msgpack frame; Arrow data never travels in
it: inserts point into the worker's shared-memory arena, and results follow as extra frames
of Arrow IPC. A worker greets with its protocol version and is refused on a mismatch.

Stream output travels on a second channel, one way: each worker PUSHes `StreamBatch`
messages (plus an Arrow IPC frame) to the coordinator's PULL socket, so a busy request loop
never delays results and a result never waits behind a request. `Subscribe` / `Unsubscribe`
on the request channel turn a stream's forwarding on and off.
"""

from __future__ import annotations

from typing import Any

import msgspec

PROTOCOL_VERSION = 3


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


SWALLOWED = b"laminardb.swallowed"
"""Schema metadata key of an empty Query answer whose emptiness is a run-time error the
engine swallowed (a division by zero): the worker checked (see `workers.engine`)."""


class Query(msgspec.Struct, tag=True):
    """Run a SELECT; the reply carries the result as one Arrow IPC stream frame (empty and
    marked `SWALLOWED` when the engine swallowed a run-time error)."""

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


class Subscribe(msgspec.Struct, tag=True):
    """Forward the output of stream `stream` on the data channel from now on."""

    rid: int
    stream: str


class Unsubscribe(msgspec.Struct, tag=True):
    """Stop forwarding `stream` (its output is still consumed, and dropped, by the worker)."""

    rid: int
    stream: str


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


class SplitRead(msgspec.Struct, tag=True):
    """Sent before the reply to `ReadFiles` request `rid`, once for each of its splits as
    the worker finishes reading it (`split`: its index in the request): a load's progress."""

    rid: int
    split: int


class PushHello(msgspec.Struct, tag=True):
    """First message on the data channel: the worker's PUSH socket is connected."""

    shard: int


class StreamBatch(msgspec.Struct, tag=True):
    """One result batch of `stream` from worker `shard`; the Arrow IPC stream follows."""

    shard: int
    stream: str


class StreamFailed(msgspec.Struct, tag=True):
    """The worker's consumer of `stream` failed: no more output will come from `shard`."""

    shard: int
    stream: str
    error: ErrorInfo


class FileSplit(msgspec.Struct):
    """One piece of a file to load: a byte range (CSV/NDJSON, `end` -1: to the end) or
    Parquet row groups; `names` are the CSV header's columns when the range lacks it."""

    path: str
    start: int = 0
    end: int = -1
    row_groups: list[int] = []
    names: list[str] = []


class ReadFiles(msgspec.Struct, tag=True):
    """Read `splits`, cast them to `schema` (Arrow IPC schema bytes) and stage them under
    `txn`: rows this worker owns directly, others in /dev/shm segments for their owners
    (named `prefix`...), listed in the reply for `StageSegments`. With `segment_all` (a
    logged load) this worker's own rows go to a segment too, so the coordinator can log
    every row before any is committed."""

    rid: int
    txn: int
    source: str
    schema: bytes
    keys: list[str]
    workers: int
    prefix: str
    format: str
    options: dict[str, Any]
    splits: list[FileSplit]
    segment_all: bool = False


class StageSegments(msgspec.Struct, tag=True):
    """Stage the Arrow IPC segments `names` (in /dev/shm) under `txn`, unlinking each."""

    rid: int
    txn: int
    source: str
    names: list[str]


class WriteQuery(msgspec.Struct, tag=True):
    """Run `sql` (a plain projection/filter of one sharded source) and write this worker's
    rows to the file `path` in `format` (`options`: header, delimiter); replies the row count."""

    rid: int
    sql: str
    path: str
    format: str
    options: dict[str, Any]


class TempRelation(msgspec.Struct):
    """A small relation shipped for one `BroadcastQuery`: created by `ddl` as source `name`
    and filled with the Arrow IPC stream at `offset` (`length` bytes) of the worker's arena."""

    name: str
    ddl: str
    offset: int
    length: int


class BroadcastQuery(msgspec.Struct, tag=True):
    """Run the SELECT `sql` with `relations` present as temporary sources, dropped after
    (workers/broadcast.py); the reply carries the result like `Query`'s."""

    rid: int
    sql: str
    relations: list[TempRelation]


Request = (
    Execute
    | Query
    | Stage
    | Commit
    | Abort
    | Call
    | Subscribe
    | Unsubscribe
    | Shutdown
    | ReadFiles
    | StageSegments
    | WriteQuery
    | BroadcastQuery
)
ToWorker = Request
FromWorker = Hello | Reply | SplitRead
DataMessage = PushHello | StreamBatch | StreamFailed

_encoder = msgspec.msgpack.Encoder()
_to_worker: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(ToWorker)
_from_worker: msgspec.msgpack.Decoder[Hello | Reply | SplitRead] = msgspec.msgpack.Decoder(
    FromWorker
)
_data: msgspec.msgpack.Decoder[DataMessage] = msgspec.msgpack.Decoder(DataMessage)


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode_request(data: bytes | memoryview) -> Request:
    return _to_worker.decode(data)


def decode_reply(data: bytes | memoryview) -> Hello | Reply | SplitRead:
    return _from_worker.decode(data)


def decode_data(data: bytes | memoryview) -> DataMessage:
    return _data.decode(data)
