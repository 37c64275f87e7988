"""The client/service wire protocol: versioned msgspec messages, Arrow data as IPC frames.

A message is one msgpack header frame (a tagged struct below) followed by zero or more data
frames. Values inside a header travel as msgpack; three extension types stand for what
msgpack cannot carry: an Arrow table (the index of the data frame holding its IPC stream),
an Arrow schema (its IPC bytes, inline) and, from the service to a client only, a result or
catalog record of `laminardb.api` (class name and slot values). Nothing is pickled: a client
can only ever make the service build Arrow tables, schemas and plain msgpack values.

Every decoding problem (wrong version, unknown message type, bad msgpack, a frame index out
of range, an oversized header) raises `ProtocolError`, which the service answers with an
error reply instead of dying.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa

VERSION = 2
MAX_HEADER_BYTES = 64 << 20
"""A header above this size is refused (the data itself travels in frames or shared memory;
a header holds SQL text and `insert_json`/`insert_csv` text, which may be megabytes)."""
MAX_FRAMES = 64

EXT_TABLE = 1
EXT_SCHEMA = 2
EXT_RECORD = 3


class ProtocolError(Exception):
    """A message that does not follow this protocol."""


# -- messages: client -> service -------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello"):
    """First message of every client socket: its protocol version and who it is. `probe`
    names a /dev/shm segment holding a one-row table with a token: a service that can read
    it shares this host's shared memory, and says so by sending the token back."""

    version: int
    pid: int
    boot_id: str = ""
    probe: str | None = None
    probe_size: int = 0


class Call(msgspec.Struct, tag="call", forbid_unknown_fields=True):
    """Run `method` of the hosted Connection. With `segment`, the Arrow data in that
    /dev/shm segment (`segment_size` bytes, IPC stream) is appended to `args`."""

    rid: int
    method: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    segment: str | None = None
    segment_size: int = 0


class Subscribe(msgspec.Struct, tag="subscribe", forbid_unknown_fields=True):
    """Follow stream `stream`; batches come back as `Batch` messages tagged with `rid`."""

    rid: int
    stream: str


class Cancel(msgspec.Struct, tag="cancel", forbid_unknown_fields=True):
    """Stop the subscription opened with `rid`."""

    rid: int


class Bye(msgspec.Struct, tag="bye", forbid_unknown_fields=True):
    """The client closes this socket: forget it and stop its subscriptions."""


Request = Hello | Call | Subscribe | Cancel | Bye


# -- messages: service -> client -------------------------------------------------------------


class Welcome(msgspec.Struct, tag="welcome"):
    version: int
    service_pid: int
    boot_id: str
    workers: int
    probe: str = ""


class Reply(msgspec.Struct, tag="reply"):
    rid: int
    value: Any = None


class Fail(msgspec.Struct, tag="error"):
    """An error: the class name, message and code of `laminardb.api.errors.to_wire`."""

    rid: int
    kind: str
    message: str
    code: int | None = None
    shard: int | None = None


class Batch(msgspec.Struct, tag="batch"):
    """One batch of a subscription (an Arrow table, sent as an IPC data frame)."""

    rid: int
    data: Any = None


class End(msgspec.Struct, tag="end"):
    """The subscription `rid` ended (cancelled, or the service is closing)."""

    rid: int


class Progress(msgspec.Struct, tag="progress"):
    """How far call `rid` (a file load) has got: input bytes `done` of `total` in `phase`
    ("read", then "commit"); sent before its `Reply`."""

    rid: int
    phase: str
    done: int
    total: int


Response = Welcome | Reply | Fail | Batch | End | Progress

_request_decoder = msgspec.msgpack.Decoder(Request)
_response_decoder = msgspec.msgpack.Decoder(Response)


# -- values ----------------------------------------------------------------------------------


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    """An Arrow table as one IPC stream buffer."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_to_table(data: Any) -> pa.Table:
    """Read an IPC stream (zero-copy over `data`); ProtocolError when it is not one."""
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
        raise ProtocolError(f"malformed Arrow IPC data: {exc}") from exc


def _record_classes() -> dict[str, type]:
    from laminardb.api import catalog, results, types

    out: dict[str, type] = {}
    for module in (catalog, results, types):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and value.__module__ == module.__name__:
                out[name] = value
    return out


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if slot not in names and slot not in ("__dict__", "__weakref__"):
                names.append(slot)
    return names


def _state(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    state = {
        name: getattr(value, name) for name in _slot_names(type(value)) if hasattr(value, name)
    }
    state.update(getattr(value, "__dict__", {}))
    return state


class Codec:
    """Encodes one message's values, collecting the data frames they refer to."""

    def __init__(self, records: bool = True) -> None:
        self.frames: list[Any] = []
        self._records = _record_classes() if records else {}
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._hook)

    def _hook(self, value: Any) -> Any:
        if isinstance(value, pa.RecordBatch):
            value = pa.Table.from_batches([value])
        if isinstance(value, pa.Table):
            self.frames.append(table_to_ipc(value))
            return msgspec.msgpack.Ext(EXT_TABLE, (len(self.frames) - 1).to_bytes(4, "little"))
        if isinstance(value, pa.Schema):
            return msgspec.msgpack.Ext(EXT_SCHEMA, value.serialize().to_pybytes())
        if isinstance(value, str | float) and not isinstance(value, bool):  # numpy's str_...
            return str(value) if isinstance(value, str) else float(value)
        if hasattr(type(value), "__index__") and not isinstance(value, bool):  # numpy ints
            return operator.index(value)
        raise TypeError(f"cannot send a {type(value).__name__} over the service protocol")

    def _prepare(self, value: Any) -> Any:
        """Records become extension values before msgspec sees them (it would turn a
        dataclass into a plain dict)."""
        if isinstance(value, list | tuple):
            return [self._prepare(v) for v in value]
        if isinstance(value, dict):
            return {k: self._prepare(v) for k, v in value.items()}
        name = type(value).__name__
        if self._records.get(name) is type(value):
            body = self._encoder.encode([name, self._prepare(_state(value))])
            return msgspec.msgpack.Ext(EXT_RECORD, body)
        return value

    def encode(self, message: msgspec.Struct) -> list[Any]:
        """[header, *data frames] of a message."""
        if self._records and isinstance(message, Reply):
            message = Reply(message.rid, self._prepare(message.value))
        header = self._encoder.encode(message)
        return [header, *self.frames]


def encode(message: msgspec.Struct) -> list[Any]:
    """Frames of a message whose values may hold tables, schemas and API records."""
    return Codec().encode(message)


def _decoder(
    kind: Any, frames: Sequence[Any], records: dict[str, type] | None
) -> msgspec.msgpack.Decoder[Any]:
    holder: list[msgspec.msgpack.Decoder[Any]] = []

    def ext_hook(code: int, data: memoryview) -> Any:
        if code == EXT_TABLE and len(data) == 4:
            index = int.from_bytes(data, "little")
            if index >= len(frames):
                raise ProtocolError(f"data frame {index} is missing (message has {len(frames)})")
            return ipc_to_table(frames[index])
        if code == EXT_SCHEMA:
            try:
                return pa.ipc.read_schema(pa.py_buffer(bytes(data)))
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise ProtocolError(f"malformed Arrow schema: {exc}") from exc
        if code == EXT_RECORD and records is not None:
            name, raw = _plain.decode(data)
            return _rebuild(records, name, raw, holder[0])
        raise ProtocolError(f"unknown value type {code} in message")

    decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind, ext_hook=ext_hook)
    holder.append(msgspec.msgpack.Decoder(Any, ext_hook=ext_hook))
    return decoder


_plain = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])


def _rebuild(
    records: dict[str, type], name: str, raw: msgspec.Raw, values: msgspec.msgpack.Decoder[Any]
) -> Any:
    cls = records.get(name)
    if cls is None:
        raise ProtocolError(f"unknown record type {name!r}")
    state = values.decode(raw)
    obj: Any = object.__new__(cls)
    for key, value in state.items():
        object.__setattr__(obj, key, value)
    return obj


def _decode(kind: Any, frames: Sequence[Any], records: dict[str, type] | None) -> Any:
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) > MAX_FRAMES:
        raise ProtocolError(f"too many frames ({len(frames)} > {MAX_FRAMES})")
    header = frames[0]
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header too large ({len(header)} bytes > {MAX_HEADER_BYTES})")
    try:
        return _decoder(kind, frames[1:], records).decode(header)
    except ProtocolError:
        raise
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ProtocolError):
            raise cause from None
        raise ProtocolError(f"malformed message: {exc}") from None


def decode_request(frames: Sequence[Any]) -> Request:
    """A client's message; tables and schemas only (never records)."""
    message: Request = _decode(Request, frames, None)
    return message


def decode_response(frames: Sequence[Any], records: dict[str, type] | None = None) -> Response:
    """A service message, rebuilding API records (QueryResult, SourceInfo, ...)."""
    message: Response = _decode(Response, frames, records or RECORDS())
    return message


_records_cache: dict[str, type] = {}


def RECORDS() -> dict[str, type]:
    """The API record classes a response may carry (loaded on first use)."""
    if not _records_cache:
        _records_cache.update(_record_classes())
    return _records_cache


def peek_rid(frames: Sequence[Any]) -> int:
    """The `rid` of an undecodable message when one can be found (0 otherwise)."""
    try:
        raw = (
            msgspec.msgpack.decode(frames[0])
            if frames and len(frames[0]) <= MAX_HEADER_BYTES
            else {}
        )
    except (msgspec.DecodeError, TypeError, ValueError):
        return 0
    rid = raw.get("rid") if isinstance(raw, dict) else None
    return rid if isinstance(rid, int) and 0 <= rid < 2**63 else 0
