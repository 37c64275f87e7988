"""`RemoteConnection`: the `Connection` API of a database hosted by a `laminardb-cluster`
service, returned by `laminardb.connect(uri)`.

Every call is one request/reply on the client's socket (serialised by a lock, so the object
can be shared between threads like a Connection). Inserts are converted and checked here
against the source's schema (same errors as `Connection.insert`), and the Arrow data goes
through /dev/shm when the service shares this host's memory (checked once at connect with a
probe segment), otherwise inline as an IPC frame. Each stream subscription has a socket and
a receiver thread of its own, filling the same `Feed` that `Connection` subscriptions read,
so the subscription classes are the very same ones. A call whose service dies fails with
`ConnectionError` instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil
import pyarrow as pa
import zmq
from zmq.utils.monitor import recv_monitor_message

from laminardb.api.args import checked_by
from laminardb.api.config import LaminarConfig
from laminardb.api.errors import (
    ConnectionError,
    LaminarError,
    codes,
    from_wire,
)
from laminardb.api.results import QueryResult
from laminardb.api.writer import WriterBase, timestamp_arg
from laminardb.files import progress as files_progress
from laminardb.service import auth, runtime, shm
from laminardb.service import protocol as p
from laminardb.service.server import boot_id
from laminardb.streams.feed import Feed

if TYPE_CHECKING:  # the subscription classes load on first use (they pull in the planner)
    from laminardb.api.subscriptions import (
        AsyncStreamSubscription,
        AsyncSubscription,
        CallbackSubscription,
        StreamSubscription,
        Subscription,
    )

log = logging.getLogger("laminardb.service")

CONNECT_TIMEOUT_S = 10.0
WAIT_SLICE_MS = 250
SECRET_ENV = "LAMINARDB_SECRET_FILE"
_AUTH_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _one_string(text: str) -> pa.Table:
    """A one-row table of `text`, built from its buffers: pyarrow's constructors from Python
    values import pandas (0.35 s here), which a CLI command that only needs a connection
    should not pay."""
    data = text.encode()
    offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
    column = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])
    return pa.Table.from_arrays([column], names=["t"])


def is_service_uri(uri: str) -> bool:
    return urlsplit(uri).scheme in ("ipc", "tcp")


class _Link:
    """One socket to the service, after a successful hello."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], uri: str, secret: auth.Secret | None):
        self.uri = uri
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if secret is not None:
            auth.join(self.sock, secret)
        try:
            self.welcome = self._hello(uri, secret is not None)
        except BaseException:
            self.sock.close(0)
            raise
        self.same_host = self.welcome.boot_id == boot_id() and bool(self.welcome.boot_id)

    def _hello(self, uri: str, curve: bool) -> p.Welcome:
        if uri.startswith("ipc://") and not os.path.exists(uri[len("ipc://") :]):
            raise ConnectionError(
                f"no laminardb service at {uri}: the socket does not exist",
                code=codes.CONNECTION_FAILED,
            )
        monitor = self.sock.get_monitor_socket(_AUTH_EVENTS)
        try:
            try:
                self.sock.connect(uri)
            except zmq.ZMQError as exc:
                raise ConnectionError(
                    f"cannot connect to {uri}: {exc}", code=codes.CONNECTION_FAILED
                ) from None
            token = secrets.token_hex(8)
            with contextlib.ExitStack() as stack:
                probe, size = None, 0
                if shm.available():
                    probe, size = stack.enter_context(shm.segment(_one_string(token)))
                hello = p.Hello(p.VERSION, os.getpid(), boot_id(), probe, size)
                deadline = time.monotonic() + CONNECT_TIMEOUT_S
                self._wait(monitor, zmq.POLLOUT, deadline, curve)  # a DEALER without a peer blocks
                self.sock.send_multipart(p.Codec(records=False).encode(hello), zmq.NOBLOCK)
                self._wait(monitor, zmq.POLLIN, deadline, curve)
                message = p.decode_response(self.sock.recv_multipart(copy=False))
        finally:
            self.sock.disable_monitor()
            monitor.close(0)
        if isinstance(message, p.Fail):
            raise from_wire(message.kind, message.message, message.code)
        if not isinstance(message, p.Welcome):
            raise ConnectionError(f"the service at {uri} did not answer hello")
        self.shared_memory = bool(message.probe) and message.probe == token
        return message

    def _wait(self, monitor: zmq.Socket[bytes], event: int, deadline: float, curve: bool) -> None:
        """Wait until the socket can send/receive; ConnectionError on refusal or timeout."""
        poller = zmq.Poller()
        poller.register(self.sock, event)
        poller.register(monitor, zmq.POLLIN)
        ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
        if monitor in ready:
            found = recv_monitor_message(monitor)
            how = "without the cluster secret" if not curve else "with a wrong secret"
            raise ConnectionError(
                f"the laminardb service at {self.uri} refused this client {how} "
                f"(authentication failed, event {found['event']}): pass secret_file= "
                f"(or set ${SECRET_ENV}) to the service's --secret-file",
                code=codes.CONNECTION_FAILED,
            )
        if self.sock not in ready:
            raise ConnectionError(
                f"no laminardb service answered at {self.uri} within {CONNECT_TIMEOUT_S:.0f} s",
                code=codes.CONNECTION_FAILED,
            )

    def send(self, frames: list[Any]) -> None:
        """Send without ever blocking on a service that went away."""
        while True:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if not self.service_alive():
                    raise self.gone() from None
                self.sock.poll(WAIT_SLICE_MS, zmq.POLLOUT)

    def service_alive(self) -> bool:
        """False once the (same-host) service process is gone; True when we cannot tell."""
        if not self.same_host:
            return True
        try:  # a killed service may stay a zombie where nobody reaps it
            return bool(psutil.Process(self.welcome.service_pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def gone(self) -> ConnectionError:
        pid = self.welcome.service_pid
        return ConnectionError(
            f"the laminardb service at {self.uri} (pid {pid}) is gone",
            code=codes.CONNECTION_CLOSED,
        )

    def receive(self, timeout_ms: int) -> p.Response | None:
        """The next message, or None after `timeout_ms`; ConnectionError if the service died."""
        if self.sock.poll(timeout_ms, zmq.POLLIN):
            return p.decode_response(self.sock.recv_multipart(copy=False))
        if not self.service_alive():
            raise self.gone()
        return None

    def close(self) -> None:
        """Say goodbye (the service forgets this socket and its subscriptions) and close."""
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send_multipart(p.encode(p.Bye()), zmq.NOBLOCK)
        self.sock.close(linger=100)


class _Receiver:
    """Fills one subscription's Feed from its own socket, on its own thread."""

    def __init__(self, link: _Link, rid: int, feed: Feed):
        self.link, self.rid, self.feed = link, rid, feed
        self.thread = threading.Thread(
            target=self._run, name=f"laminardb-remote-{feed.stream}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.feed.active:
                try:
                    message = self.link.receive(WAIT_SLICE_MS)
                except LaminarError as exc:
                    self.feed.fail(exc)
                    return
                except p.ProtocolError as exc:
                    self.feed.fail(ConnectionError(f"bad message from the service: {exc}"))
                    break
                if isinstance(message, p.Batch) and message.rid == self.rid:
                    if isinstance(message.data, pa.Table):
                        self.feed.put(message.data)
                elif isinstance(message, p.End):
                    self.feed.end()
                    return
                elif isinstance(message, p.Fail):
                    error = from_wire(message.kind, message.message, message.code, message.shard)
                    self.feed.fail(
                        error if isinstance(error, LaminarError) else LaminarError(str(error))
                    )
                    return
        finally:
            self.link.close()


#: `argument_checks(Connection)`, spelled out so that connecting does not import the
#: coordinator (a test keeps the two equal): the client fails as `Connection` does.
ARGUMENT_CHECKS: dict[str, tuple[tuple[int, str, str], ...]] = {
    **dict.fromkeys(("insert", "writer", "schema", "stats"), ((1, "table", "str"),)),
    **dict.fromkeys(("insert_json", "insert_csv"), ((1, "table", "str"), (2, "data", "str"))),
    "load": ((1, "table", "str"), (2, "path", "str"), (3, "format", "str | None")),
    **dict.fromkeys(("sql", "explain"), ((1, "query", "str"),)),
    **dict.fromkeys(
        ("query", "stream", "subscribe", "subscribe_callback", "subscribe_async", "execute"),
        ((1, "sql", "str"),),
    ),
    **dict.fromkeys(
        (
            "subscribe_stream",
            "subscribe_stream_callback",
            "subscribe_stream_async",
            "create_table",
            "source_metrics",
            "stream_metrics",
        ),
        ((1, "name", "str"),),
    ),
    "query_stream": ((1, "name", "str"), (2, "filter", "str | None")),
    "cancel_query": ((1, "query_id", "int"),),
}


def _remote(method: str) -> Callable[..., Any]:
    def call(self: RemoteConnection, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, *args, kwargs=kwargs)

    call.__name__ = method
    call.__doc__ = f"`Connection.{method}` of the hosted database."
    return call


def _remote_property(name: str) -> property:
    def get(self: RemoteConnection) -> Any:
        return self._call(name)

    get.__name__ = name
    get.__doc__ = f"`Connection.{name}` of the hosted database."
    return property(get)


@checked_by(ARGUMENT_CHECKS)
class RemoteConnection:
    """The `Connection` API of a database served by `laminardb-cluster` at `uri`.

    `secret_file` (or `$LAMINARDB_SECRET_FILE`) is the service's `--secret-file`, needed
    when it listens beyond loopback. Extra over `Connection`: `status()` (what the CLI's
    `status` shows) and `stop_service()`.
    """

    def __init__(self, uri: str, *, secret_file: str | None = None):
        self.path = uri
        self.config = LaminarConfig()
        secret_file = secret_file or os.environ.get(SECRET_ENV) or None
        self._secret = auth.load(secret_file) if secret_file else None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._link = _Link(self._ctx, uri, self._secret)
        except BaseException:
            self._ctx.term()
            raise
        self._lock = threading.RLock()
        self._rids = itertools.count(1)
        self._closed = False
        self._shutdown = False
        self._schemas: dict[str, pa.Schema] = {}
        self._receivers: list[_Receiver] = []
        self._watchers = threading.local()  # per thread: the progress watcher of its calls
        self._finalizer = weakref.finalize(self, _finalize, self._ctx, self._link, self._receivers)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def shared_memory(self) -> bool:
        """Whether inserts travel through /dev/shm (the service shares this host's memory)."""
        return self._link.shared_memory

    def _check(self) -> None:
        if self._shutdown:
            raise LaminarError("Shutdown (901): Database is shut down", code=codes.SHUTDOWN)
        if self._closed:
            raise ConnectionError("Connection is closed")

    def _call(
        self,
        method: str,
        *args: Any,
        data: pa.Table | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        with self._lock:
            self._check()
            rid = next(self._rids)
            if data is not None and self._link.shared_memory:
                with shm.segment(data) as (name, size):
                    return self._roundtrip(
                        p.Call(rid, method, list(args), kwargs or {}, name, size)
                    )
            if data is not None:
                args = (*args, data)
            return self._roundtrip(p.Call(rid, method, list(args), kwargs or {}))

    def _roundtrip(self, message: p.Call | p.Subscribe, link: _Link | None = None) -> Any:
        link = link or self._link
        frames = p.Codec(records=False).encode(message)
        if len(frames[0]) > p.MAX_HEADER_BYTES:
            raise LaminarError(
                f"request too large for the service ({len(frames[0])} bytes of SQL or text > "
                f"{p.MAX_HEADER_BYTES}): send rows as data (insert of a table) or load() a file"
            )
        link.send(frames)
        while True:
            reply = link.receive(WAIT_SLICE_MS)
            if isinstance(reply, p.Fail) and reply.rid == 0:  # the service could not read our
                raise from_wire(reply.kind, reply.message, reply.code, reply.shard)  # rid
            if reply is None or getattr(reply, "rid", None) != message.rid:
                continue  # still waiting, or a late answer to an abandoned call
            if isinstance(reply, p.Fail):
                raise from_wire(reply.kind, reply.message, reply.code, reply.shard)
            if isinstance(reply, p.Reply):
                return reply.value
            watcher = getattr(self._watchers, "progress", None)
            if isinstance(reply, p.Progress) and watcher is not None:
                try:
                    watcher(reply.phase, reply.done, reply.total)
                except Exception as exc:  # a failing watcher never fails the call
                    log.warning("progress watcher failed: %s", exc)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed and not self._shutdown

    def close(self) -> None:
        """Detach from the service (it keeps running); ends this client's subscriptions.
        After `shutdown()`, as natively, the connection then counts as closed."""
        with self._lock:
            self._closed = True
            self._shutdown = False
        self._finalizer()

    def shutdown(self) -> None:
        """Like native: later calls fail with the Shutdown error (the service keeps running)."""
        self.close()
        self._shutdown = True

    def __enter__(self) -> RemoteConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Connection(closed)" if self.is_closed else f"Connection(open, {self.path})"

    def status(self) -> dict[str, Any]:
        """The service and each worker (pid, alive, rows, rows/s, RSS, CPU %, watermark)."""
        value: dict[str, Any] = self._call("status")
        return value

    def stop_service(self) -> None:
        """Ask the service to shut down (every client is detached) and wait until it exits."""
        self._call("stop")
        if self._link.same_host:
            with contextlib.suppress(psutil.Error):
                runtime.wait_gone(psutil.Process(self._link.welcome.service_pid), 60)
        self.close()

    # -- ingestion ----------------------------------------------------------------------------

    def _source_schema(self, table: str, fresh: bool = False) -> pa.Schema:
        if fresh or table not in self._schemas:
            self._schemas[table] = self._call("source_schema", table)
        return self._schemas[table]

    def _convert(self, table: str, data: Any) -> pa.Table:
        from laminardb.ingest import convert

        schema = self._source_schema(table)
        try:
            return convert.to_table(data, schema, table=table)
        except (LaminarError, TypeError, ValueError):
            latest = self._source_schema(table, fresh=True)  # another client may have changed it
            if latest.equals(schema):
                raise
            return convert.to_table(data, latest, table=table)

    def insert(self, table: str, data: Any) -> int:
        """Validate `data` here, ship it (through /dev/shm on this host); all rows or none."""
        with self._lock:
            self._check()
            rows = self._convert(table, data)
            count: int = self._call("insert", table, data=rows)
            return count

    def load(
        self,
        table: str,
        path: str,
        format: str | None = None,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        **options: Any,
    ) -> int:
        """Load files into a source; `path` is read by the service (made absolute here);
        `progress` as for `Connection.load`."""
        with self.watching(progress):
            count: int = self._call("load", table, os.path.abspath(path), format, kwargs=options)
        return count

    @contextlib.contextmanager
    def watching(self, progress: Callable[[str, int, int], None] | None) -> Iterator[None]:
        """Hear the progress reports of the loads this thread runs in the block, `COPY ...
        FROM` statements included (the CLI's progress bar)."""
        files_progress.check(progress)
        previous = getattr(self._watchers, "progress", None)
        self._watchers.progress = progress
        try:
            yield
        finally:
            self._watchers.progress = previous

    insert_json = _remote("insert_json")
    insert_csv = _remote("insert_csv")

    def writer(self, table: str) -> RemoteWriter:
        return RemoteWriter(self, table, self._source_schema(table, fresh=True))

    # -- statements and queries ---------------------------------------------------------------

    def execute(self, sql: str) -> Any:
        self._schemas.clear()
        return self._call("execute", sql)

    def create_table(self, name: str, schema: Any, partition_by: list[str] | None = None) -> None:
        from laminardb.api.schemas import arrow_schema

        self._schemas.clear()
        self._call("create_table", name, arrow_schema(schema), partition_by)

    sql = _remote("sql")
    query = _remote("query")
    explain = _remote("explain")
    query_stream = _remote("query_stream")
    start = _remote("start")
    checkpoint = _remote("checkpoint")
    cancel_query = _remote("cancel_query")
    queries = _remote("queries")
    schema = _remote("schema")
    sources = _remote("sources")
    workers = _remote("workers")
    list_tables = _remote("list_tables")
    list_streams = _remote("list_streams")
    list_sinks = _remote("list_sinks")
    tables = _remote("tables")
    materialized_views = _remote("materialized_views")
    sinks = _remote("sinks")
    streams = _remote("streams")
    topology = _remote("topology")
    metrics = _remote("metrics")
    source_metrics = _remote("source_metrics")
    all_source_metrics = _remote("all_source_metrics")
    stream_metrics = _remote("stream_metrics")
    all_stream_metrics = _remote("all_stream_metrics")
    stats = _remote("stats")
    pipeline_watermark = _remote_property("pipeline_watermark")
    total_events_processed = _remote_property("total_events_processed")
    source_count = _remote_property("source_count")
    sink_count = _remote_property("sink_count")
    is_checkpoint_enabled = _remote_property("is_checkpoint_enabled")
    pipeline_state = _remote_property("pipeline_state")
    active_query_count = _remote_property("active_query_count")

    def stream(self, sql: str) -> Any:
        """The result of `sql` as an iterator of QueryResult batches (one-shot, like native)."""
        from laminardb.api.observe import BatchIterator

        return BatchIterator(self.sql(sql).to_arrow())

    def subscribe(self, sql: str) -> Subscription:
        from laminardb.api.subscriptions import Subscription

        return Subscription(self.sql(sql).to_arrow())

    def subscribe_callback(
        self, sql: str, on_data: Any, on_error: Any = None
    ) -> CallbackSubscription:
        from laminardb.api.subscriptions import CallbackSubscription

        table = self.sql(sql).to_arrow()
        feed = Feed.finished("query", table.to_batches(), table.schema)
        return CallbackSubscription(feed, on_data, on_error, kind="query")

    async def subscribe_async(self, sql: str) -> AsyncSubscription:
        from laminardb.api.subscriptions import AsyncSubscription

        table = self.sql(sql).to_arrow()
        return AsyncSubscription(Feed.finished("query", table.to_batches(), table.schema))

    # -- stream subscriptions -----------------------------------------------------------------

    def _open_stream(self, name: str) -> Feed:
        with self._lock:
            self._check()
            link = _Link(self._ctx, self._link.uri, self._secret)
            rid = next(self._rids)
            try:
                schema = self._roundtrip(p.Subscribe(rid, name), link)
            except BaseException:
                link.close()
                raise
            feed = Feed(name, schema=schema if isinstance(schema, pa.Schema) else None)
            self._receivers[:] = [r for r in self._receivers if r.thread.is_alive()]
            self._receivers.append(_Receiver(link, rid, feed))
            return feed

    def subscribe_stream(self, name: str) -> StreamSubscription:
        """Every batch of stream `name` produced from now on (any number of subscribers)."""
        from laminardb.api.subscriptions import StreamSubscription

        return StreamSubscription(self._open_stream(name))

    def subscribe_stream_callback(
        self, name: str, on_data: Any, on_error: Any = None
    ) -> CallbackSubscription:
        from laminardb.api.subscriptions import CallbackSubscription

        return CallbackSubscription(self._open_stream(name), on_data, on_error)

    async def subscribe_stream_async(self, name: str) -> AsyncStreamSubscription:
        from laminardb.api.subscriptions import AsyncStreamSubscription

        return AsyncStreamSubscription(self._open_stream(name))


class RemoteWriter(WriterBase):
    """`Writer` of a remote source: inserts go through the client, flush and watermark to the
    service."""

    def __init__(self, conn: RemoteConnection, name: str, schema: pa.Schema):
        super().__init__(conn, name, schema)
        self._conn = conn

    def flush(self) -> int:
        self._check()
        rows: int = self._conn._call("writer_flush", self._name)
        return rows

    def watermark(self, timestamp: int) -> None:
        timestamp = timestamp_arg(timestamp)
        self._check()
        mark = self._conn._call("writer_watermark", self._name, timestamp)
        self._watermark = max(self._watermark, int(mark))

    def close(self) -> None:
        if not self._closed:
            if not self._conn._closed:
                self.flush()
            self._closed = True


def _finalize(ctx: zmq.Context[zmq.Socket[bytes]], link: _Link, receivers: list[_Receiver]) -> None:
    for receiver in receivers:
        receiver.feed.discard()
    for receiver in receivers:
        receiver.thread.join(5)
    link.close()
    ctx.destroy(linger=0)


__all__ = ["QueryResult", "RemoteConnection", "RemoteWriter", "is_service_uri"]
