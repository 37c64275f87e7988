"""The service: one hosted Connection served to many clients over a ZeroMQ ROUTER socket.

The main thread owns the ROUTER socket: it decodes each request (anything malformed gets an
error reply at once, the loop goes on) and hands the work to a thread pool, because one
client's long query must not stall the others. Replies and subscription batches come back
to the main thread through an inproc PULL socket (ZeroMQ sockets are single-threaded) and
leave on the ROUTER. Each stream subscription has a thread of its own that waits on the
hosted connection's subscription and forwards its batches; a client that vanished (its
identity is unknown to the ROUTER) has its subscriptions cancelled.

Only the methods in METHODS and PROPERTIES can be called; arguments are msgpack values,
Arrow tables and schemas (see protocol), so a client cannot make the service run code.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import msgspec
import psutil
import zmq

from laminardb.api.errors import LaminarError, to_wire
from laminardb.files import progress as files_progress
from laminardb.service import auth, shm
from laminardb.service import protocol as p

if TYPE_CHECKING:
    from laminardb.api.connection import Connection
    from laminardb.api.subscriptions import StreamSubscription

log = logging.getLogger("laminardb.service")

MAX_MESSAGE_BYTES = 1 << 30
"""A bigger message is dropped by ZeroMQ itself (same-host data goes through /dev/shm)."""
POOL_THREADS = 8
POLL_MS = 200
SAMPLE_S = 0.5
_OUT = "inproc://laminardb-service-out"

METHODS = frozenset(
    {
        "sql", "query", "execute", "explain", "create_table", "start", "checkpoint",
        "cancel_query", "queries", "schema", "sources", "workers", "list_tables",
        "list_streams", "list_sinks", "tables", "materialized_views", "sinks", "streams",
        "topology", "metrics", "source_metrics", "all_source_metrics", "stream_metrics",
        "all_stream_metrics", "stats", "query_stream", "insert", "insert_json", "insert_csv",
        "load",
    }
)  # fmt: skip
PROPERTIES = frozenset(
    {
        "pipeline_watermark", "total_events_processed", "source_count", "sink_count",
        "is_checkpoint_enabled", "pipeline_state", "active_query_count",
    }
)  # fmt: skip
SERVICE_CALLS = frozenset({"source_schema", "writer_flush", "writer_watermark", "status", "stop"})


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Service:
    """Serves `conn` on `listen` until `stop()`; `close()` frees everything."""

    def __init__(self, conn: Connection, listen: str, secret: auth.Secret | None = None):
        if not auth.is_local(listen) and secret is None:
            raise ValueError(f"listening on {listen} (not loopback) requires a secret file")
        self.conn = conn
        self.started = time.time()
        self._stop = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._auth = None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._out = self._ctx.socket(zmq.PULL)
        self._out.setsockopt(zmq.LINGER, 0)
        try:
            if secret is not None:
                self._auth = auth.serve(self._ctx, self._sock, secret)
            self._sock.bind(listen)
            self._out.bind(_OUT)
        except BaseException:
            self._close_sockets()
            raise
        endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.uri = endpoint
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint[len("ipc://") :], 0o600)
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="laminardb-service")
        self._local = threading.local()
        self._pushers: list[zmq.Socket[bytes]] = []
        self._pushers_lock = threading.Lock()
        self._clients: dict[bytes, int | None] = {}
        """Client sockets said hello, with the client's pid when it runs on this host."""
        self._subs: dict[tuple[bytes, int], StreamSubscription] = {}
        self._pumps: list[threading.Thread] = []
        self._subs_lock = threading.Lock()
        self._samples: collections.deque[tuple[float, list[int]]] = collections.deque(maxlen=4)
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_now: dict[int, float] = {}
        self._boot = boot_id()

    # -- main loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (safe from signal handlers and other threads)."""
        self._stop.set()

    def serve(self) -> None:
        """Run until `stop()`; then stop every subscription (close() frees the rest)."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._out, zmq.POLLIN)
        sampler = threading.Thread(target=self._sample, name="laminardb-service-sampler")
        sampler.start()
        try:
            self._loop(poller)
        finally:
            self._stop.set()
            sampler.join()

    def _loop(self, poller: zmq.Poller) -> None:
        while not self._stop.is_set():
            for sock, _ in poller.poll(POLL_MS):
                if sock is self._sock:
                    self._receive()
                else:
                    self._forward()
        if self._out.poll(100, zmq.POLLIN):  # e.g. the reply to a "stop" request
            self._forward()

    def _receive(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            body = [f.buffer for f in frames[1:]]
            try:
                message = p.decode_request(body)
            except p.ProtocolError as exc:
                log.warning("malformed message from a client: %s", exc)
                self._send(identity, p.encode(p.Fail(p.peek_rid(body), "ProtocolError", str(exc))))
                continue
            self._dispatch(identity, message)

    def _dispatch(self, identity: bytes, message: p.Request) -> None:
        if isinstance(message, p.Hello):
            if message.version != p.VERSION:
                text = (
                    f"protocol version {message.version} is not supported by this service "
                    f"(it speaks version {p.VERSION}); use a matching laminardb"
                )
                self._send(identity, p.encode(p.Fail(0, "ConnectionError", text, 100)))
                return
            self._pool.submit(self._welcome, identity, message)
            return
        if isinstance(message, p.Bye):
            self._forget(identity, "closed")
            return
        if identity not in self._clients:
            text = "say hello first: this socket has not opened a session"
            self._send(identity, p.encode(p.Fail(message.rid, "ConnectionError", text, 100)))
            return
        if isinstance(message, p.Call):
            known = message.method in METHODS or message.method in PROPERTIES
            if not known and message.method not in SERVICE_CALLS:
                text = f"unknown method {message.method!r}"
                self._send(identity, p.encode(p.Fail(message.rid, "ProtocolError", text)))
                return
            self._pool.submit(self._call, identity, message)
        elif isinstance(message, p.Subscribe):
            self._pool.submit(self._subscribe, identity, message)
        else:
            with self._subs_lock:
                sub = self._subs.pop((identity, message.rid), None)
            if sub is not None:
                sub.cancel()

    def _forward(self) -> None:
        while True:
            try:
                frames = self._out.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._send(frames[0].bytes, frames[1:])

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        try:
            self._sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            self._forget(identity, "gone" if exc.errno == errno.EHOSTUNREACH else "not reading")

    def _forget(self, identity: bytes, why: str) -> None:
        """A client we cannot reach: drop it and stop its subscriptions."""
        self._clients.pop(identity, None)
        with self._subs_lock:
            gone = [key for key in self._subs if key[0] == identity]
            subs = [self._subs.pop(key) for key in gone]
        for sub in subs:
            sub.cancel()
        if subs:
            log.info(
                "client %s is %s: %d subscription(s) cancelled", identity.hex(), why, len(subs)
            )

    # -- work (pool threads) ---------------------------------------------------------------------

    def _push(self, identity: bytes, message: msgspec.Struct) -> None:
        try:
            frames = p.encode(message)
        except Exception as exc:  # a value the protocol cannot carry: tell the caller
            kind, text, code = to_wire(exc)
            frames = p.encode(p.Fail(getattr(message, "rid", 0), kind, text, code))
        pusher = getattr(self._local, "push", None)
        if pusher is None:
            pusher = self._ctx.socket(zmq.PUSH)
            pusher.setsockopt(zmq.LINGER, 0)
            pusher.connect(_OUT)
            self._local.push = pusher
            with self._pushers_lock:
                self._pushers.append(pusher)
        pusher.send_multipart([identity, *frames], copy=False)

    def _fail(self, identity: bytes, rid: int, exc: BaseException) -> None:
        kind, text, code = to_wire(exc)
        if isinstance(exc, p.ProtocolError):
            kind = "ProtocolError"
        shard = exc.shard if isinstance(exc, LaminarError) else None
        self._push(identity, p.Fail(rid, kind, text, code, shard))

    def _live_clients(self) -> int:
        """Clients that said hello and not goodbye, less those on this host whose process
        has died (a killed client never says goodbye)."""
        for identity, pid in list(self._clients.items()):
            if pid is not None and not psutil.pid_exists(pid):
                self._clients.pop(identity, None)
        return len(self._clients)

    def _welcome(self, identity: bytes, hello: p.Hello) -> None:
        token = ""
        if hello.probe is not None:
            try:
                token = str(shm.take(hello.probe, hello.probe_size).column(0)[0].as_py())
            except Exception as exc:  # another host, or another /dev/shm: data goes inline
                log.info("client %d cannot share memory with us: %s", hello.pid, exc)
        self._clients[identity] = hello.pid if hello.boot_id == self._boot else None
        workers = len(self.conn._cluster.workers)
        self._push(identity, p.Welcome(p.VERSION, os.getpid(), self._boot, workers, token))

    def _call(self, identity: bytes, call: p.Call) -> None:
        try:
            args = list(call.args)
            if call.segment is not None:
                args.append(shm.take(call.segment, call.segment_size))

            def told(phase: str, done: int, total: int) -> None:
                self._push(identity, p.Progress(call.rid, phase, done, total))

            with files_progress.watching(told):
                value = self._invoke(call.method, args, call.kwargs)
        except Exception as exc:
            self._fail(identity, call.rid, exc)
            return
        self._push(identity, p.Reply(call.rid, value))

    def _invoke(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        conn = self.conn
        if method in PROPERTIES:
            return getattr(conn, method)
        if method in METHODS:
            return getattr(conn, method)(*args, **kwargs)
        if method == "source_schema":
            with conn._lock:
                conn._check()
                return conn._source_schema(*args)
        if method == "writer_flush":
            return conn.writer(*args).flush()
        if method == "writer_watermark":
            writer = conn.writer(args[0])
            writer.watermark(*args[1:])
            return writer.current_watermark
        if method == "status":
            return self.status()
        threading.Timer(0.05, self.stop).start()  # "stop": after the reply has gone out
        return True

    def _subscribe(self, identity: bytes, message: p.Subscribe) -> None:
        try:
            sub = self.conn.subscribe_stream(message.stream)
        except Exception as exc:
            self._fail(identity, message.rid, exc)
            return
        with self._subs_lock:
            self._subs[(identity, message.rid)] = sub
            thread = threading.Thread(
                target=self._pump,
                args=(identity, message.rid, sub),
                name=f"laminardb-service-sub-{message.stream}",
                daemon=True,
            )
            self._pumps = [t for t in self._pumps if t.is_alive()] + [thread]
        self._push(identity, p.Reply(message.rid, sub.schema))
        thread.start()

    def _pump(self, identity: bytes, rid: int, sub: StreamSubscription) -> None:
        try:
            while True:
                try:
                    result = sub.next()
                except LaminarError as exc:
                    self._fail(identity, rid, exc)
                    return
                if result is None:
                    self._push(identity, p.End(rid))
                    return
                self._push(identity, p.Batch(rid, result.to_arrow()))
        finally:
            with self._subs_lock:
                self._subs.pop((identity, rid), None)
            self._close_local()

    def _close_local(self) -> None:
        pusher = getattr(self._local, "push", None)
        if pusher is not None:
            with self._pushers_lock:
                if pusher not in self._pushers:
                    return  # close() already closed it (this thread outlived its join)
                self._pushers.remove(pusher)
            pusher.close(0)
            self._local.push = None

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The cluster and each worker: pid, liveness, rows, rows/s, RSS, CPU %, watermark,
        stream count (what `laminardb-cluster status` shows)."""
        conn = self.conn
        infos = conn.workers()
        metrics: list[dict[str, Any] | None] = [None] * len(infos)
        with contextlib.suppress(LaminarError), conn._lock:
            conn._check()
            metrics = list(conn._broadcast_call("metrics", []))
        rates = self._rates(len(infos))
        workers = []
        for info in infos:
            m = metrics[info.shard] if info.shard < len(metrics) else None
            workers.append(
                {
                    "shard": info.shard,
                    "pid": info.pid,
                    "alive": info.alive,
                    "rows_ingested": info.rows_ingested,
                    "rows_per_s": rates[info.shard],
                    "rss_bytes": info.rss_bytes,
                    "cpu_percent": self._cpu_now.get(info.pid, 0.0) if info.alive else 0.0,
                    "watermark": None if m is None else m.get("pipeline_watermark"),
                    "streams": None if m is None else m.get("stream_count"),
                }
            )
        me = psutil.Process()
        with self._subs_lock:
            subs = len(self._subs)
        return {
            "pid": os.getpid(),
            "uri": self.uri,
            "uptime_s": time.time() - self.started,
            "path": conn.path,
            "clients": self._live_clients(),
            "subscriptions": subs,
            "rss_bytes": me.memory_info().rss,
            "cpu_percent": self._cpu_now.get(os.getpid(), 0.0),
            "workers": workers,
        }

    def _sample(self) -> None:
        """Every SAMPLE_S: rows sent per worker, and CPU % of the service and each worker
        (psutil measures CPU between two calls, so it must be sampled continuously)."""
        while not self._stop.wait(SAMPLE_S):
            self._samples.append((time.monotonic(), list(self.conn._router.rows_sent)))
            pids = [os.getpid(), *(w.pid for w in self.conn._cluster.workers)]
            self._cpu_now = {pid: self._cpu(pid) for pid in pids}

    def _rates(self, count: int) -> list[float]:
        now = (time.monotonic(), list(self.conn._router.rows_sent))
        old = self._samples[0] if self._samples else now
        span = now[0] - old[0]
        if span <= 0 or len(old[1]) != count:
            return [0.0] * count
        return [max(0.0, (a - b) / span) for a, b in zip(now[1], old[1], strict=True)]

    def _cpu(self, pid: int) -> float:
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
                return 0.0
            return float(proc.cpu_percent(None))
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0.0

    # -- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop subscriptions and the pool, close the connection (workers), free sockets."""
        self._stop.set()
        with self._subs_lock:
            subs = list(self._subs.values())
            self._subs.clear()
            pumps = list(self._pumps)
        for sub in subs:
            sub.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.conn.close()
        finally:
            for thread in pumps:
                thread.join(5)
            self._close_sockets()

    def _close_sockets(self) -> None:
        with self._pushers_lock:
            for pusher in self._pushers:
                pusher.close(0)
            self._pushers.clear()
        self._out.close(0)
        self._sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.destroy(linger=0)  # also closes a socket a stuck subscription thread held
