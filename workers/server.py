"""The worker process: serves one shard's engine to the coordinator over ZeroMQ.

It exits on a Shutdown request, when its parent process is gone (checked several times a
second, so a `kill -9` of the parent frees the worker within a second), or when the
coordinator's socket reports the peer gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import zmq

from laminardb.api.errors import to_wire
from laminardb.wire import arrow_ipc, protocol
from laminardb.wire.arena import Arena
from workers import preload

PARENT_POLL_S = 0.1


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a spawned worker needs; plain values so that it crosses `spawn` cheaply."""

    shard: int
    endpoint: str
    data_endpoint: str
    arena_name: str
    arena_size: int
    parent_pid: int
    cpus: list[int] | None = None
    engine_threads: int | None = None
    log_level: int = logging.WARNING

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


EXCHANGE_BLOCK = 1 << 16
"""Rows a numpy pass of the key hash covers in a worker with several engine threads."""


def run(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker process."""
    if spec.engine_threads:
        os.environ["TOKIO_WORKER_THREADS"] = str(spec.engine_threads)
        os.environ["POLARS_MAX_THREADS"] = str(spec.engine_threads)  # read at its import
    if spec.cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(spec.cpus))
    if spec.engine_threads:
        import pyarrow as pa  # its thread pool would otherwise size itself to every core

        pa.set_cpu_count(spec.engine_threads)
    if spec.engine_threads and spec.engine_threads > 1:
        from laminardb.ingest import xxh3

        # A load's key exchange hashes on every thread of the worker at once, and Python holds
        # the GIL between two numpy steps: at 8,192 rows a step, 8 threads hashed 5M keys in
        # 115 ms (66 ms on one); at 65,536, in 28 ms (16-core machine, run 8 in the README).
        xxh3.BLOCK = EXCHANGE_BLOCK
    from laminardb.service import logs

    logs.configure(spec.shard, spec.log_level)  # every record carries `shard`
    _watch_parent(spec.parent_pid)
    from workers.engine import Engine  # loads the native engine only in the worker

    Server(spec, Engine(threads=spec.engine_threads or 1)).serve()
    os._exit(0)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Server:
    """Request loop: one request at a time, in arrival order."""

    def __init__(self, spec: WorkerSpec, engine: Any):
        self.spec = spec
        self.engine = engine
        self.arena = Arena.attach(spec.arena_name, spec.arena_size)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"w{spec.shard}".encode())
        self.sock.connect(spec.endpoint)
        from workers.streams import StreamPump

        self.pump = StreamPump(self.ctx, spec.data_endpoint, spec.shard)
        engine.streams = self.pump
        self.staged: dict[int, list[tuple[str, pa.Table]]] = {}
        self.idle = preload.Idle()
        self.parquet_seen = False

    def serve(self) -> None:
        self.pump.hello()
        hello = protocol.Hello(protocol.PROTOCOL_VERSION, self.spec.shard, os.getpid())
        self.sock.send(protocol.encode(hello))
        self.engine.warm_up()
        idle = self.idle  # file readers are imported while no request waits (issue 8)
        preload.start(idle)
        try:
            while True:
                idle.enter()
                frames = self.sock.recv_multipart(copy=False)
                idle.leave()
                request = protocol.decode_request(frames[0].buffer)
                reply, data = self._handle(request, frames[1].buffer if len(frames) > 1 else None)
                out = [protocol.encode(reply)]
                if data is not None:
                    out.append(data)
                self.sock.send_multipart(out, copy=False)
                if isinstance(request, protocol.Shutdown):
                    break
        finally:
            idle.stop.set()
            self.engine.close()  # stops the stream consumers before the engine closes
            self.pump.close()
            self.sock.close(0)
            self.ctx.term()
            self.arena.close()

    def _handle(self, request: protocol.Request, payload: Any) -> tuple[protocol.Reply, Any]:
        try:
            value, data = self._dispatch(request, payload)
            return protocol.Reply(request.rid, value), data
        except Exception as exc:  # every failure goes back to the caller, the worker stays up
            kind, message, code = to_wire(exc)
            return protocol.Reply(request.rid, error=protocol.ErrorInfo(kind, message, code)), None

    def _dispatch(self, r: protocol.Request, payload: Any) -> tuple[Any, Any]:
        engine = self.engine
        if isinstance(r, protocol.Stage):
            source = payload if r.inline else self.arena.view[r.offset : r.offset + r.length]
            table = arrow_ipc.copy_out(memoryview(source))
            self.staged.setdefault(r.txn, []).append((r.source, table))
            return table.num_rows, None
        if isinstance(r, protocol.Commit):
            rows = 0
            by_source: dict[str, list[pa.Table]] = {}
            for source, table in self.staged.pop(r.txn, []):
                by_source.setdefault(source, []).append(table)
            for source, tables in by_source.items():
                rows += engine.insert(source, pa.concat_tables(tables))
            _end_files(r.txn, aborted=False)
            return rows, None
        if isinstance(r, protocol.Abort):
            self.staged.pop(r.txn, None)
            _end_files(r.txn, aborted=True)
            return None, None
        if isinstance(r, protocol.Query):
            return None, arrow_ipc.dumps(engine.query_checked(r.sql))
        if isinstance(r, protocol.BroadcastQuery):
            from workers import broadcast  # small relations shipped for one query

            return None, arrow_ipc.dumps(broadcast.run(engine.conn, self.arena.view, r))
        if isinstance(r, protocol.Execute):
            result = engine.execute(r.sql, r.kind, r.name)
            table = result.pop("table")
            return result, (arrow_ipc.dumps(table) if table is not None else None)
        if isinstance(r, protocol.Call):
            return self._call(r.method, r.args)
        if isinstance(r, (protocol.Subscribe, protocol.Unsubscribe)):
            self.pump.forward(engine.conn, r.stream, isinstance(r, protocol.Subscribe))
            return None, None
        if isinstance(r, protocol.Shutdown):
            return None, None
        if isinstance(r, (protocol.ReadFiles, protocol.StageSegments, protocol.WriteQuery)):
            from workers import files  # file loads: laminardb/files, workers/files.py

            if isinstance(r, protocol.WriteQuery):
                return files.write_query(r, engine.query(r.sql)), None
            if isinstance(r, protocol.ReadFiles):
                if r.format == "parquet" and not self.parquet_seen:
                    self.parquet_seen = True  # later loads read with polars (polars_read.py)
                    preload.start(self.idle, preload.PARQUET_MODULES)
                rid = r.rid

                def read(split: int) -> None:
                    self.sock.send(protocol.encode(protocol.SplitRead(rid, split)))

                return files.read_files(r, self.spec.shard, self.staged, read), None
            return files.stage_segments(r, self.staged), None
        raise TypeError(f"unknown request {type(r).__name__}")

    def _call(self, method: str, args: list[Any]) -> tuple[Any, Any]:
        from workers import introspect

        if method == "quiesce":
            # After a restart's replay (laminardb/cluster/recovery.py): let the engine turn the
            # replayed rows into results while no stream is forwarded, so none is sent twice.
            self.engine.quiesce()
            return None, None
        return introspect.call(self.engine, method, args)


def _end_files(txn: int, aborted: bool) -> None:
    """Tell the file-load side (if a load ever ran here) that transaction `txn` is over."""
    files = sys.modules.get("workers.files")
    if files is not None:
        files.end(txn, aborted)
