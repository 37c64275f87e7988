"""laminardb: the LaminarDB Python API on every core.

`laminardb.open()` starts a coordinator in this process and one worker process per core,
each running a native LaminarDB engine over its shard of every source. The names, classes,
errors and codes are those of the single-process bindings, so their code runs unchanged.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import TYPE_CHECKING, Any

from laminardb.api.args import integer_arg, not_text

if TYPE_CHECKING:
    from laminardb.api.catalog import (
        PipelineEdge,
        PipelineMetrics,
        PipelineNode,
        PipelineTopology,
        QueryInfo,
        SinkInfo,
        SourceInfo,
        SourceMetrics,
        StreamInfo,
        StreamMetrics,
        WorkerInfo,
    )
    from laminardb.api.config import LaminarConfig
    from laminardb.api.connection import Connection
    from laminardb.api.errors import (
        CheckpointError,
        ConnectionError,
        ConnectorError,
        IngestionError,
        LaminarError,
        QueryError,
        SchemaError,
        StreamError,
        SubscriptionError,
        codes,
    )
    from laminardb.api.results import CheckpointResult, ExecuteResult, QueryResult
    from laminardb.api.subscriptions import (
        AsyncStreamSubscription,
        AsyncSubscription,
        CallbackSubscription,
        StreamSubscription,
        Subscription,
    )
    from laminardb.api.types import (
        ChangeEvent,
        ChangeRow,
        CheckpointStatus,
        Column,
        MaterializedView,
        Metrics,
        Schema,
        TableStats,
        Watermark,
    )
    from laminardb.api.writer import Writer
    from laminardb.service.client import RemoteConnection

# Public names load on first use (PEP 562): a worker process imports laminardb.api.errors
# and laminardb.wire without paying for the coordinator's modules (sqlglot, the planner).
_LAZY = {
    "PipelineEdge": "laminardb.api.catalog",
    "PipelineMetrics": "laminardb.api.catalog",
    "PipelineNode": "laminardb.api.catalog",
    "PipelineTopology": "laminardb.api.catalog",
    "QueryInfo": "laminardb.api.catalog",
    "SinkInfo": "laminardb.api.catalog",
    "SourceInfo": "laminardb.api.catalog",
    "SourceMetrics": "laminardb.api.catalog",
    "StreamInfo": "laminardb.api.catalog",
    "StreamMetrics": "laminardb.api.catalog",
    "WorkerInfo": "laminardb.api.catalog",
    "LaminarConfig": "laminardb.api.config",
    "Config": "laminardb.api.config:LaminarConfig",
    "Connection": "laminardb.api.connection",
    "CheckpointError": "laminardb.api.errors",
    "ConnectionError": "laminardb.api.errors",
    "ConnectorError": "laminardb.api.errors",
    "IngestionError": "laminardb.api.errors",
    "LaminarError": "laminardb.api.errors",
    "QueryError": "laminardb.api.errors",
    "SchemaError": "laminardb.api.errors",
    "StreamError": "laminardb.api.errors",
    "SubscriptionError": "laminardb.api.errors",
    "codes": "laminardb.api.errors",
    "CheckpointResult": "laminardb.api.results",
    "ExecuteResult": "laminardb.api.results",
    "QueryResult": "laminardb.api.results",
    "AsyncStreamSubscription": "laminardb.api.subscriptions",
    "AsyncSubscription": "laminardb.api.subscriptions",
    "CallbackSubscription": "laminardb.api.subscriptions",
    "StreamSubscription": "laminardb.api.subscriptions",
    "Subscription": "laminardb.api.subscriptions",
    "ChangeEvent": "laminardb.api.types",
    "ChangeRow": "laminardb.api.types",
    "CheckpointStatus": "laminardb.api.types",
    "Column": "laminardb.api.types",
    "MaterializedView": "laminardb.api.types",
    "Metrics": "laminardb.api.types",
    "Schema": "laminardb.api.types",
    "TableStats": "laminardb.api.types",
    "Watermark": "laminardb.api.types",
    "Writer": "laminardb.api.writer",
    "BatchWriter": "laminardb.api.writer:Writer",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'laminardb' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.17.0"


def default_workers() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def open(
    path: str = ":memory:",
    *,
    workers: int | None = None,
    config: LaminarConfig | None = None,
    **options: Any,
) -> Connection:
    """Open a database served by `workers` processes (default: one per usable core)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)  # beyond native, which takes str only
    if not isinstance(path, str):
        raise not_text("path", path)
    count = default_workers() if workers is None else integer_arg("workers", workers)
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    from laminardb.api.connection import Connection

    return Connection(path, workers=count, config=config, **options)


def connect(
    uri: str, *, workers: int | None = None, secret_file: str | None = None
) -> Connection | RemoteConnection:
    """Attach to a `laminardb-cluster` service at `uri` (`ipc://…` or `tcp://…`, as printed
    by `laminardb-cluster start`); `secret_file` is its `--secret-file` when it has one.
    Any other URI opens a local in-memory database, like native `connect`."""
    from laminardb.service.client import RemoteConnection, is_service_uri

    if not isinstance(uri, str):
        raise not_text("_uri", uri)  # native's parameter name
    if is_service_uri(uri):
        return RemoteConnection(uri, secret_file=secret_file)
    return open(":memory:", workers=workers)


_default: Connection | None = None
_default_lock = threading.Lock()


def _get_default() -> Connection:
    global _default
    with _default_lock:
        if _default is None or _default.is_closed:
            _default = open(":memory:")
        return _default


def sql(query: str) -> QueryResult:
    """Run a query on the module's default connection."""
    return _get_default().sql(query)


def execute(query: str) -> ExecuteResult:
    """Run a statement on the module's default connection."""
    return _get_default().execute(query)


def mv(conn: Connection, name: str, sql_def: str | None = None) -> MaterializedView:
    """A MaterializedView helper for the named stream."""
    from laminardb.api.types import MaterializedView

    return MaterializedView(conn, name, sql_def)


__all__ = [
    "AsyncStreamSubscription",
    "AsyncSubscription",
    "BatchWriter",
    "CallbackSubscription",
    "ChangeEvent",
    "ChangeRow",
    "CheckpointError",
    "CheckpointResult",
    "CheckpointStatus",
    "Column",
    "Config",
    "Connection",
    "ConnectionError",
    "ConnectorError",
    "ExecuteResult",
    "IngestionError",
    "LaminarConfig",
    "LaminarError",
    "MaterializedView",
    "Metrics",
    "PipelineEdge",
    "PipelineMetrics",
    "PipelineNode",
    "PipelineTopology",
    "QueryError",
    "QueryInfo",
    "QueryResult",
    "Schema",
    "SchemaError",
    "SinkInfo",
    "SourceInfo",
    "SourceMetrics",
    "StreamError",
    "StreamInfo",
    "StreamMetrics",
    "StreamSubscription",
    "Subscription",
    "SubscriptionError",
    "TableStats",
    "Watermark",
    "WorkerInfo",
    "Writer",
    "__version__",
    "codes",
    "connect",
    "execute",
    "mv",
    "open",
    "sql",
]
