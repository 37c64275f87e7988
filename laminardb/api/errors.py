"""The native exception hierarchy and error codes, re-created so they cross process boundaries.

The native classes call themselves `laminardb.<Name>` and cannot be pickled once renamed,
so errors travel between processes as (class name, message, code, shard) and are rebuilt
here. Our classes carry the same names, messages and codes as the native ones.
"""

from __future__ import annotations

import re
from typing import Any


class LaminarError(Exception):
    """Base class of every LaminarDB error.

    `code` is set when the message carries the native `(NNN)` form or the caller knows it;
    `shard` names the worker an error came from (None: raised by the coordinator).
    """

    code: int
    shard: int | None

    def __init__(self, message: str = "", *, code: int | None = None, shard: int | None = None):
        super().__init__(message)
        found = code if code is not None else _code_in(message)
        if found is not None:
            self.code = found
        self.shard = shard


class ConnectionError(LaminarError):
    """Connection lifecycle errors (closed connection, dead worker)."""


class QueryError(LaminarError):
    """SQL parse, planning or execution failures."""


class IngestionError(LaminarError):
    """Data that could not be inserted."""


class SchemaError(LaminarError):
    """Unknown or duplicate tables and data that does not fit a schema."""


class SubscriptionError(LaminarError):
    """Subscription failures and timeouts."""


class StreamError(LaminarError):
    """Stream and materialized view failures."""


class CheckpointError(LaminarError):
    """Checkpoint failures."""


class ConnectorError(LaminarError):
    """Connector failures."""


class codes:
    """Error code constants, equal to the native engine's."""

    CONNECTION_FAILED = 100
    CONNECTION_CLOSED = 101
    CONNECTION_IN_USE = 102
    TABLE_NOT_FOUND = 200
    TABLE_EXISTS = 201
    SCHEMA_MISMATCH = 202
    INVALID_SCHEMA = 203
    INGESTION_FAILED = 300
    WRITER_CLOSED = 301
    BATCH_SCHEMA_MISMATCH = 302
    QUERY_FAILED = 400
    SQL_PARSE_ERROR = 401
    QUERY_CANCELLED = 402
    SUBSCRIPTION_FAILED = 500
    SUBSCRIPTION_CLOSED = 501
    SUBSCRIPTION_TIMEOUT = 502
    INTERNAL_ERROR = 900
    SHUTDOWN = 901


ERROR_CLASSES: dict[str, type[LaminarError]] = {
    cls.__name__: cls
    for cls in (
        LaminarError,
        ConnectionError,
        QueryError,
        IngestionError,
        SchemaError,
        SubscriptionError,
        StreamError,
        CheckpointError,
        ConnectorError,
    )
}

_CODE = re.compile(r"\((\d{3})\)")


def _code_in(message: str) -> int | None:
    match = _CODE.search(message)
    return int(match.group(1)) if match else None


def to_wire(exc: BaseException) -> tuple[str, str, int | None]:
    """(class name, message, code) of a native or own error; other exceptions keep their name."""
    return type(exc).__name__, str(exc), getattr(exc, "code", None)


def from_wire(kind: str, message: str, code: int | None, shard: int | None = None) -> Exception:
    """Rebuild an error sent by a worker: a LaminarError subclass, or a builtin like TypeError."""
    cls = ERROR_CLASSES.get(kind)
    if cls is not None:
        return cls(message, code=code, shard=shard)
    builtin: Any = {
        "TypeError": TypeError,
        "ValueError": ValueError,
        "OverflowError": OverflowError,  # an argument out of a native integer's range
    }.get(kind)
    if builtin is not None:
        return builtin(message)  # type: ignore[no-any-return]
    return LaminarError(f"{kind}: {message}", code=code, shard=shard)
