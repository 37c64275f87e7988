"""Starts, talks to and stops the worker processes of one coordinator.

Each worker is a fresh interpreter (`python -m workers`: spawned, never forked, since a fork
after the engine started leaves a dead pipeline; and unlike multiprocessing's spawn it never
re-imports the caller's main module, so scripts need no `__main__` guard), gets its own
shared-memory arena, and connects a DEALER socket to our ROUTER on
a private ipc:// endpoint. Requests carry ids; while we wait for replies we watch every
worker we wait on, so a dead worker is reported by name within a poll tick instead of hanging.

Each worker also connects a PUSH socket to our PULL socket (the data channel, for stream
output). Both endpoints live in a private (0700) temporary folder that stays while the
cluster is open, so that a worker that died can be started again on the same endpoints
(`restart`), and is removed by `close()`; a folder left by a coordinator that was killed is
swept by the next cluster started on the machine. The PULL socket is handed to the streams
layer (`take_data_socket`), whose receiver thread owns it.

Deadlines: a reply that does not come within `request_timeout_s` fails the call with a
`ConnectionError` naming the silent workers (a stopped or wedged process); their later
replies carry request ids nobody waits for any more and are dropped.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from laminardb.api.errors import ConnectionError, LaminarError, codes, from_wire
from laminardb.cluster import cores
from laminardb.wire import protocol
from laminardb.wire.arena import SHM_DIR, Arena, sweep_stale

log = logging.getLogger("laminardb.cluster")

POLL_MS = 100
DIR_PREFIX = "laminardb-"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 3.0
SETTLE_S = 0.2


@dataclass(frozen=True)
class ClusterOptions:
    """Tuning knobs of the worker pool."""

    workers: int
    arena_bytes: int = 64 << 20
    request_timeout_s: float = 300.0
    pin_cpus: bool = True
    log_level: int = logging.WARNING
    broadcast_rows: int | None = None  # planner: None = laminardb.plan.broadcast.BROADCAST_ROWS


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


_READS = (
    protocol.Query,
    protocol.BroadcastQuery,
    protocol.WriteQuery,
    protocol.Subscribe,
    protocol.Unsubscribe,
)
_READ_CALLS = frozenset(
    {
        *("schema", "sources", "streams", "sinks", "list_tables", "list_streams", "list_sinks"),
        *("tables", "materialized_views", "metrics", "source_metrics", "stream_metrics"),
        *("all_source_metrics", "all_stream_metrics", "pipeline_watermark", "topology"),
        *("show", "stats"),
    }
)
"""Requests (and `Call` methods, workers/introspect.py) that never change what a worker's
relations hold; every other one (inserts, loads, DDL, watermarks) moves `Cluster.epoch` on."""


def _changes_data(request: protocol.Request) -> bool:
    if isinstance(request, protocol.Call):
        return request.method not in _READ_CALLS
    return not isinstance(request, _READS)


class Cluster:
    """The worker pool and the request channel to it. Not thread-safe: callers hold `lock`.

    `epoch` changes whenever the workers' data may have (a request that is not a read was
    sent, or a worker was restarted): what was read at one epoch is still true while it
    stays the same (a broadcast join's small side, row counts).
    """

    def __init__(self, options: ClusterOptions):
        self.options = options
        self.lock = threading.RLock()
        self.closed = False
        self._rids = itertools.count(1)
        self._txns = itertools.count(1)
        self.workers: list[WorkerHandle] = []
        self.epoch = 0
        sweep_stale()
        sweep_stale_dirs()
        self._dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
        os.chmod(self._dir, 0o700)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes its name back
        self._endpoint = f"ipc://{self._dir}/ctl"
        self._sock.bind(self._endpoint)
        self._data: zmq.Socket[bytes] | None = self._ctx.socket(zmq.PULL)
        self._data.setsockopt(zmq.LINGER, 0)
        self._data_endpoint = f"ipc://{self._dir}/data"
        self._data.bind(self._data_endpoint)
        self.restarts = [0] * options.workers
        try:
            self._spawn()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        for shard in range(self.options.workers):
            self.workers.append(self._start_worker(shard))
        self._await_hello(self.workers, data=True)
        # Every worker has mapped its arena: its name need not stay in /dev/shm.
        for worker in self.workers:
            worker.arena.unlink()

    @property
    def worker_cores(self) -> int:
        """The cores each worker runs on (its engine's threads)."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return cores.engine_threads(cpus, self.options.workers) or 1

    def _start_worker(self, shard: int) -> WorkerHandle:
        from workers.server import WorkerSpec

        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        n = self.options.workers
        sets = cores.core_sets(cpus, n) if self.options.pin_cpus else None
        arena = self._create_arena(shard)
        spec = WorkerSpec(
            shard=shard,
            endpoint=self._endpoint,
            data_endpoint=self._data_endpoint,
            arena_name=arena.name,
            arena_size=arena.size,
            parent_pid=os.getpid(),
            cpus=sets[shard] if sets else None,
            engine_threads=cores.engine_threads(cpus, n),
            log_level=self.options.log_level,
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers", "laminardb-worker", spec.to_json()],
                stdin=subprocess.DEVNULL,
                env=_worker_env(),
            )
        except BaseException:
            arena.unlink()
            arena.close()
            raise
        return WorkerHandle(shard, process, arena)

    def _create_arena(self, shard: int) -> Arena:
        """The shared-memory arena of worker `shard`, or a clear error when /dev/shm is full
        (checked first: touching pages of an overfull tmpfs mapping would kill us by SIGBUS)."""
        size = self.options.arena_bytes
        try:
            st = os.statvfs(SHM_DIR)
            free = st.f_bavail * st.f_frsize
            if free < size:
                raise OSError(errno.ENOSPC, f"{free >> 20} MiB free, {size >> 20} MiB needed")
            return Arena.create(size, f"w{shard}")
        except OSError as exc:
            raise ConnectionError(
                f"cannot create the shared-memory arena of worker {shard} in {SHM_DIR}: "
                f"{exc.strerror or exc}; free space there or open with a smaller arena_bytes",
                code=codes.CONNECTION_FAILED,
                shard=shard,
            ) from exc

    def dead(self, suspect: int | None = None) -> list[WorkerHandle]:
        """The workers whose process has exited. `suspect`: a worker whose channel just
        failed gets SETTLE_S to be reaped (its sockets close a moment before it exits)."""
        if suspect is not None and 0 <= suspect < len(self.workers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.workers[suspect].process.wait(SETTLE_S)
        return [w for w in self.workers if not w.alive]

    def restart(self, shard: int) -> WorkerHandle:
        """Replace worker `shard` by a fresh process (empty engine) on the same endpoints.

        The old process is killed if it still runs (a wedged worker is replaced this way).
        The caller rebuilds the new engine's catalog and rows (laminardb/cluster/recovery.py).
        """
        self._check_open()
        old = self.workers[shard]
        if old.alive:
            old.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.process.wait(STOP_TIMEOUT_S)
        old.arena.close()
        worker = self._start_worker(shard)
        self.workers[shard] = worker
        try:
            self._await_hello([worker], data=self._data is not None)
        finally:
            worker.arena.unlink()
        self.restarts[shard] += 1
        self.epoch += 1
        log.warning("%s restarted (replacing pid %d)", worker.describe(), old.pid)
        return worker

    def _await_hello(self, workers: Sequence[WorkerHandle], data: bool) -> None:
        """Wait until each of `workers` greeted on the control channel (and the data channel
        while we still own it; afterwards the streams receiver reads and ignores the greeting)."""
        waiting = {w.identity: w for w in workers}
        data_waiting = {w.shard: w for w in workers} if data else {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting or data_waiting:
            while data_waiting and self._data is not None and self._data.poll(0):
                hello = protocol.decode_data(self._data.recv_multipart()[0])
                if isinstance(hello, protocol.PushHello):
                    data_waiting.pop(hello.shard, None)
            if not waiting:
                assert self._data is not None
                self._data.poll(POLL_MS)
            elif self._sock.poll(POLL_MS):
                frames = self._sock.recv_multipart()
                msg = protocol.decode_reply(frames[1])
                if not isinstance(msg, protocol.Hello) or frames[0] not in waiting:
                    continue  # during a restart: a late reply from another worker
                worker = waiting.pop(frames[0])
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
        if _changes_data(request):
            self.epoch += 1
        worker = self.workers[shard]
        frames = [worker.identity, protocol.encode(request)]
        if data is not None:
            frames.append(data)
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            raise self._dead(worker, f"cannot reach it ({exc})") from exc

    def collect(
        self,
        pending: dict[int, int],
        timeout_s: float | None = None,
        on_reply: Callable[[Response], None] | None = None,
        on_split: Callable[[int, int], None] | None = None,
    ) -> dict[int, Response]:
        """Wait for the replies `pending` (rid -> shard); the first error is raised after all
        arrive. `on_reply` sees each successful reply as it arrives, `on_split` each
        (shard, split) a worker reports read before it replies (a load's progress)."""
        deadline = time.monotonic() + (timeout_s or self.options.request_timeout_s)
        out: dict[int, Response] = {}
        error: Exception | None = None
        pending = dict(pending)
        while pending:
            if self._sock.poll(POLL_MS):
                frames = self._sock.recv_multipart(copy=False)
                msg = protocol.decode_reply(frames[1].buffer)
                if isinstance(msg, protocol.SplitRead) and msg.rid in pending and on_split:
                    on_split(pending[msg.rid], msg.split)
                    continue
                if not isinstance(msg, protocol.Reply) or msg.rid not in pending:
                    continue  # a late reply to a request we already gave up on
                shard = pending.pop(msg.rid)
                if msg.error is not None:
                    if error is None:
                        error = from_wire(msg.error.kind, msg.error.message, msg.error.code, shard)
                    continue
                data = frames[2] if len(frames) > 2 else None
                out[msg.rid] = Response(shard, msg.value, data)
                if on_reply is not None:
                    on_reply(out[msg.rid])
                continue
            for shard in set(pending.values()):
                worker = self.workers[shard]
                if not worker.alive:
                    raise self._dead(worker, f"exited with code {worker.exitcode}")
            if time.monotonic() > deadline:
                raise self._timed_out(sorted(set(pending.values())), timeout_s)
        if error is not None:
            raise error
        return out

    def request(self, shard: int, request: protocol.Request, data: Any = None) -> Response:
        self.send(shard, request, data)
        return self.collect({request.rid: shard})[request.rid]

    def broadcast(self, make: Any, shards: Sequence[int] | None = None) -> list[Response]:
        """Send `make(rid)` to each shard at once, return the replies in shard order.

        A worker that cannot be reached does not keep the request from the others (a Commit
        must reach every live worker); its error is raised once the others have answered.
        """
        targets = range(len(self.workers)) if shards is None else shards
        pending: dict[int, int] = {}
        unreachable: LaminarError | None = None
        for shard in targets:
            rid = self.new_rid()
            try:
                self.send(shard, make(rid))
            except LaminarError as exc:
                unreachable = unreachable or exc
                continue
            pending[rid] = shard
        if unreachable is not None:
            with contextlib.suppress(LaminarError):
                self.collect(pending)
            raise unreachable
        replies = self.collect(pending)
        return sorted(replies.values(), key=lambda r: r.shard)

    def _timed_out(self, shards: list[int], timeout_s: float | None) -> LaminarError:
        limit = timeout_s or self.options.request_timeout_s
        names = ", ".join(self.workers[s].describe() for s in shards)
        return ConnectionError(
            f"timed out: {names} did not answer within {limit:g} s (request_timeout_s); "
            "it may be stopped or overloaded",
            code=codes.CONNECTION_FAILED,
            shard=shards[0],
        )

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


def sweep_stale_dirs() -> list[str]:
    """Remove endpoint folders (`laminardb-<pid>-*`) whose coordinator process is gone."""
    import psutil

    root = tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(DIR_PREFIX):
            continue
        try:
            pid = int(name[len(DIR_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        path = os.path.join(root, name)
        if (
            not psutil.pid_exists(pid)
            and os.path.isdir(path)
            and os.stat(path).st_uid == os.getuid()
        ):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed
