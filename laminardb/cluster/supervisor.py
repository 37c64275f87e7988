"""Starts, talks to and stops the worker processes of one coordinator.

Each worker is a fresh interpreter (`python -m workers`: spawned, never forked, since a fork
after the engine started leaves a dead pipeline; and unlike multiprocessing's spawn it never
re-imports the caller's main module, so scripts need no `__main__` guard), gets its own
shared-memory arena, and connects a DEALER socket to our ROUTER on
a private ipc:// endpoint. Requests carry ids; while we wait for replies we watch every
worker we wait on, so a dead worker is reported by name within a poll tick instead of hanging.

Each worker also connects a PUSH socket to our PULL socket (the data channel, for stream
output). Both endpoints live in a private temporary folder that is removed as soon as every
worker has greeted on both channels, so nothing of ours stays in the file system. The PULL
socket is handed to the streams layer (`take_data_socket`), whose receiver thread owns it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from laminardb.api.errors import ConnectionError, LaminarError, codes, from_wire
from laminardb.wire import protocol
from laminardb.wire.arena import Arena, sweep_stale

log = logging.getLogger("laminardb.cluster")

POLL_MS = 100
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ClusterOptions:
    """Tuning knobs of the worker pool."""

    workers: int
    arena_bytes: int = 64 << 20
    request_timeout_s: float = 300.0
    pin_cpus: bool = True
    log_level: int = logging.WARNING


@dataclass
class Response:
    """A worker's reply: plain value plus the optional Arrow IPC frame."""

    shard: int
    value: Any
    data: Any = None


class WorkerHandle:
    """The coordinator's side of one worker: process, arena, identity."""

    def __init__(self, shard: int, process: subprocess.Popen[bytes], arena: Arena):
        self.shard = shard
        self.process = process
        self.arena = arena
        self.pid: int = process.pid
        self.identity = f"w{shard}".encode()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def describe(self) -> str:
        return f"worker {self.shard} (pid {self.pid})"


class Cluster:
    """The worker pool and the request channel to it. Not thread-safe: callers hold `lock`."""

    def __init__(self, options: ClusterOptions):
        self.options = options
        self.lock = threading.RLock()
        self.closed = False
        self._rids = itertools.count(1)
        self._txns = itertools.count(1)
        self.workers: list[WorkerHandle] = []
        sweep_stale()
        self._dir = tempfile.mkdtemp(prefix=f"laminardb-{os.getpid()}-")
        os.chmod(self._dir, 0o700)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        endpoint = f"ipc://{self._dir}/ctl"
        self._sock.bind(endpoint)
        self._data: zmq.Socket[bytes] | None = self._ctx.socket(zmq.PULL)
        self._data.setsockopt(zmq.LINGER, 0)
        self._data_endpoint = f"ipc://{self._dir}/data"
        self._data.bind(self._data_endpoint)
        try:
            self._spawn(endpoint)
        except BaseException:
            self.close()
            raise

    def _spawn(self, endpoint: str) -> None:
        from workers.server import WorkerSpec

        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        n = self.options.workers
        pin = self.options.pin_cpus and len(cpus) > n
        threads = max(1, len(cpus) // n) if cpus else None
        for shard in range(n):
            arena = Arena.create(self.options.arena_bytes, f"w{shard}")
            spec = WorkerSpec(
                shard=shard,
                endpoint=endpoint,
                data_endpoint=self._data_endpoint,
                arena_name=arena.name,
                arena_size=arena.size,
                parent_pid=os.getpid(),
                cpu=cpus[(shard + 1) % len(cpus)] if pin else None,
                engine_threads=threads,
                log_level=self.options.log_level,
            )
            process = subprocess.Popen(
                [sys.executable, "-m", "workers", "laminardb-worker", spec.to_json()],
                stdin=subprocess.DEVNULL,
                env=_worker_env(),
            )
            self.workers.append(WorkerHandle(shard, process, arena))
        self._await_hello()
        # Every worker has mapped its arena and connected: no name of ours needs to stay around.
        for worker in self.workers:
            worker.arena.unlink()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _await_hello(self) -> None:
        waiting = {w.identity: w for w in self.workers}
        data_waiting = {w.shard: w for w in self.workers}
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting or data_waiting:
            assert self._data is not None
            while self._data.poll(0):
                hello = protocol.decode_data(self._data.recv_multipart()[0])
                if isinstance(hello, protocol.PushHello):
                    data_waiting.pop(hello.shard, None)
            if not waiting:
                self._data.poll(POLL_MS)
            elif self._sock.poll(POLL_MS):
                identity, payload = self._sock.recv_multipart()
                msg = protocol.decode_reply(payload)
                worker = waiting.pop(identity, None)
                if not isinstance(msg, protocol.Hello) or worker is None:
                    continue
                if msg.version != protocol.PROTOCOL_VERSION:
                    raise ConnectionError(
                        f"{worker.describe()} speaks protocol {msg.version}, "
                        f"expected {protocol.PROTOCOL_VERSION}",
                        code=codes.CONNECTION_FAILED,
                    )
            for worker in (*waiting.values(), *data_waiting.values()):
                if not worker.alive:
                    raise ConnectionError(
                        f"{worker.describe()} exited with code {worker.exitcode} while starting",
                        code=codes.CONNECTION_FAILED,
                    )
            if time.monotonic() > deadline:
                late = {w.shard for w in (*waiting.values(), *data_waiting.values())}
                raise ConnectionError(
                    f"workers {sorted(late)} did not start within {START_TIMEOUT_S:.0f} s",
                    code=codes.CONNECTION_FAILED,
                )

    # -- requests -------------------------------------------------------------------------

    def take_data_socket(self) -> zmq.Socket[bytes]:
        """The PULL socket of the data channel; the caller owns it from now on and closes it
        (from the thread that reads it) before `close()` is called."""
        sock, self._data = self._data, None
        if sock is None:
            raise RuntimeError("the data socket was already taken")
        return sock

    def next_txn(self) -> int:
        return next(self._txns)

    def new_rid(self) -> int:
        return next(self._rids)

    def send(self, shard: int, request: protocol.Request, data: Any = None) -> None:
        """Queue one request to a worker (the reply is collected by `collect`)."""
        self._check_open()
        worker = self.workers[shard]
        frames = [worker.identity, protocol.encode(request)]
        if data is not None:
            frames.append(data)
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            raise self._dead(worker, f"cannot reach it ({exc})") from exc

    def collect(
        self, pending: dict[int, int], timeout_s: float | None = None
    ) -> dict[int, Response]:
        """Wait for the replies `pending` (rid -> shard); the first error is raised after all arrive."""
        deadline = time.monotonic() + (timeout_s or self.options.request_timeout_s)
        out: dict[int, Response] = {}
        error: Exception | None = None
        pending = dict(pending)
        while pending:
            if self._sock.poll(POLL_MS):
                frames = self._sock.recv_multipart(copy=False)
                msg = protocol.decode_reply(frames[1].buffer)
                if not isinstance(msg, protocol.Reply) or msg.rid not in pending:
                    continue  # a late reply to a request we already gave up on
                shard = pending.pop(msg.rid)
                if msg.error is not None:
                    if error is None:
                        error = from_wire(msg.error.kind, msg.error.message, msg.error.code, shard)
                    continue
                data = frames[2] if len(frames) > 2 else None
                out[msg.rid] = Response(shard, msg.value, data)
                continue
            for shard in set(pending.values()):
                worker = self.workers[shard]
                if not worker.alive:
                    raise self._dead(worker, f"exited with code {worker.exitcode}")
            if time.monotonic() > deadline:
                shards = sorted(set(pending.values()))
                raise ConnectionError(
                    f"workers {shards} did not answer within {timeout_s or self.options.request_timeout_s:.0f} s",
                    code=codes.CONNECTION_FAILED,
                )
        if error is not None:
            raise error
        return out

    def request(self, shard: int, request: protocol.Request, data: Any = None) -> Response:
        self.send(shard, request, data)
        return self.collect({request.rid: shard})[request.rid]

    def broadcast(self, make: Any, shards: Sequence[int] | None = None) -> list[Response]:
        """Send `make(rid)` to each shard at once, return the replies in shard order."""
        targets = range(len(self.workers)) if shards is None else shards
        pending: dict[int, int] = {}
        for shard in targets:
            rid = self.new_rid()
            self.send(shard, make(rid))
            pending[rid] = shard
        replies = self.collect(pending)
        return sorted(replies.values(), key=lambda r: r.shard)

    def _dead(self, worker: WorkerHandle, why: str) -> LaminarError:
        return ConnectionError(
            f"{worker.describe()} is dead: {why}", code=codes.CONNECTION_FAILED, shard=worker.shard
        )

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionError("Connection is closed")

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker (politely, then by force), free arenas, sockets and files."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.send_multipart(
                        [worker.identity, protocol.encode(protocol.Shutdown(0))], flags=zmq.NOBLOCK
                    )
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.alive:
                worker.process.kill()
                worker.process.wait(STOP_TIMEOUT_S)
            worker.arena.close()
        self._sock.close(0)
        if self._data is not None:
            self._data.close(0)
        self._ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    """The caller's environment, with this package importable even when it is not installed."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
