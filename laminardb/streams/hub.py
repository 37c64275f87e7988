"""The coordinator's side of stream subscriptions: receive, fan out, and tell workers what to send.

Every worker holds the one native consumer of each stream (workers/streams.py) and pushes the
results of the streams the coordinator asked for on the data channel. One receiver thread
reads that channel and appends each batch to the `Feed` of every subscriber of its stream, so
a stream can have any number of subscribers, each with its own bounded buffer: a slow one
fails alone (see feed.py) and never holds up the others or the workers.

The receiver never sends requests to workers: a worker's request loop can be blocked behind
its engine, which can be blocked behind a stream waiting for us to read, so waiting on a
worker from the receiver could deadlock. Workers are told to start forwarding a stream
(`Subscribe`) by the subscribing call, which holds the connection's lock; they are told to
stop (`Unsubscribe`) when the last subscriber leaves and the lock is free at that moment, or
else by the next subscribing call. Until then the receiver drops batches nobody wants.

A stream is served by union where the union of the workers' outputs is its output (union.py,
or a single worker). A windowed aggregate that `merge.plan` can split runs on the workers in
its partial form, merged per window here (merged.py, merge.py), and so is a non-windowed
aggregate, merged as running totals (cumulative.py); that path is preferred even
where union would do, because the coordinator then closes windows by the cluster watermark
and a worker that gets no more rows cannot hold a window open. Others raise `StreamError`
rather than deliver per-shard partial results. Dropping a stream ends its subscribers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pyarrow as pa
import zmq

from laminardb.api.errors import LaminarError, SchemaError, StreamError, SubscriptionError, codes
from laminardb.cluster.catalog import Catalog
from laminardb.cluster.supervisor import Cluster
from laminardb.plan.statements import Statement, StatementKind
from laminardb.streams import merged, union
from laminardb.streams.feed import MAX_BATCHES, MAX_BYTES, Feed
from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb.streams")

POLL_MS = 50
LIVENESS_S = 0.5
"""How often the receiver checks that every worker is alive while subscribers wait."""
JOIN_S = 2.0
"""How long `close` waits for a callback thread still running user code."""


class StreamHub:
    """Subscribers by stream, the receiver thread that feeds them, and forwarding control."""

    def __init__(
        self,
        cluster: Cluster,
        sock: zmq.Socket[Any],
        max_batches: int = MAX_BATCHES,
        max_bytes: int = MAX_BYTES,
    ):
        self._cluster = cluster
        self._sock = sock
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # guards _feeds, _forwarded, _threads
        self._feeds: dict[str, list[Feed]] = {}
        self._forwarded: set[str] = set()  # streams the workers were told to send
        self._threads: list[threading.Thread] = []  # callback threads, joined by close
        self._lost: LaminarError | None = None
        self.merges = merged.Merges(cluster)
        self._stop = threading.Event()
        self._closed = False
        self._receiver = threading.Thread(
            target=self._receive, name="laminardb-stream-receiver", daemon=True
        )
        self._receiver.start()

    # -- subscribing (caller holds the cluster lock) ----------------------------------------

    def open(self, name: str, catalog: Catalog) -> Feed:
        """A new subscriber of stream `name`: every batch that reaches us from now on."""
        if self._lost is not None:
            raise self._lost
        run = self.merges.runs.get(name)
        if run is not None and getattr(run.merger, "broken", False):
            raise StreamError(
                f"stream '{name}' cannot be subscribed: a worker restarted since it was "
                "created, so its running totals over all workers are lost; re-create it "
                "(DROP STREAM, then CREATE STREAM) to count from then on"
            )
        if run is not None:
            feed = Feed(name, self.max_batches, self.max_bytes, run.merger.output_schema)
            with self._lock:
                self._feeds.setdefault(name, []).append(feed)
            return feed
        sql = self._stream_sql(name)
        # One worker holds every row: its output is the stream's, whatever the SQL.
        reason = union.why_not_union(sql, catalog) if len(self._cluster.workers) > 1 else None
        if reason is not None:
            merge_reason = self.merges.reasons.get(name)
            raise StreamError(
                f"stream '{name}' cannot be subscribed on a cluster yet: {reason}"
                + (f", and it is not merged per window: {merge_reason}" if merge_reason else "")
                + ". Its per-worker results would be partial; run it with workers=1, or "
                "partition its source by the columns it groups by"
            )
        feed = Feed(name, self.max_batches, self.max_bytes, self._schema(name))
        with self._lock:
            self._feeds.setdefault(name, []).append(feed)
        try:
            self._apply_forwarding()
        except BaseException:
            self.release(feed)
            raise
        return feed

    def _stream_sql(self, name: str) -> str:
        reply = self._cluster.request(0, protocol.Call(self._cluster.new_rid(), "streams"))
        for stream_name, sql in reply.value:
            if stream_name == name:
                return str(sql or "")
        raise SchemaError(
            f"Table not found (200): Table not found: {name}", code=codes.TABLE_NOT_FOUND
        )

    def _schema(self, name: str) -> pa.Schema | None:
        reply = self._cluster.request(0, protocol.Call(self._cluster.new_rid(), "schema", [name]))
        return arrow_ipc.loads(reply.data.buffer).schema

    def _apply_forwarding(self) -> None:
        """Bring the workers' forwarding in line with who subscribes (cluster lock held)."""
        while True:
            with self._lock:
                wanted = {
                    name
                    for name, feeds in self._feeds.items()
                    if feeds and name not in self.merges.runs
                }
                add = sorted(wanted - self._forwarded)
                drop = sorted(self._forwarded - wanted)
            if not add and not drop:
                return
            for name in add:
                self._cluster.broadcast(lambda rid, n=name: protocol.Subscribe(rid, n))
                with self._lock:
                    self._forwarded.add(name)
            for name in drop:
                with self._lock:
                    self._forwarded.discard(name)
                self._cluster.broadcast(lambda rid, n=name: protocol.Unsubscribe(rid, n))

    # -- leaving (any thread) ---------------------------------------------------------------

    def release(self, feed: Feed) -> None:
        """Forget a subscriber (cancel); returns at once, whoever holds the connection lock."""
        feed.discard()
        with self._lock:
            feeds = self._feeds.get(feed.stream, [])
            if feed in feeds:
                feeds.remove(feed)
            idle = not feeds and feed.stream in self._forwarded
        if idle and not self._closed and self._cluster.lock.acquire(blocking=False):
            try:
                if not self._cluster.closed:
                    self._apply_forwarding()
            except LaminarError as exc:
                log.warning("could not stop forwarding stream %s: %s", feed.stream, exc)
            finally:
                self._cluster.lock.release()

    # -- merged streams (caller holds the cluster lock) ---------------------------------------

    def after_ddl(self, stmt: Statement, catalog: Catalog) -> None:
        """A catalog statement succeeded: keep partial streams in step; a dropped stream's
        subscribers end (next() returns None; the native engine leaves them blocked)."""
        gone = set(self.merges.after_ddl(stmt, catalog))
        with self._lock:
            followed = {name for name, feeds in self._feeds.items() if feeds}
        if stmt.kind is StatementKind.DROP and stmt.cascade and followed - gone:
            gone |= followed - self.merges.stream_names()  # dropped with their source
        for name in sorted(gone):
            with self._lock:
                feeds = self._feeds.pop(name, [])
            for feed in feeds:
                feed.end()
        self._apply_forwarding()

    def on_worker_restart(self, shard: int) -> None:
        """Worker `shard` was restarted and rebuilt (laminardb/cluster/recovery.py): its merged
        streams run their partial form again, open windows are given up (the partials it had
        not sent died with it) and their subscribers told so; forwarding is switched back on."""
        for name, run in self.merges.runs.items():
            lost = run.merger.lose_open()
            what = (
                "its running totals cannot be merged any more; re-create the stream"
                if run.plan.cumulative
                else f"the {len(lost)} window(s) open then cannot be merged "
                "exactly and are not emitted; subscribe again for later windows"
            )
            if lost:
                self._fail_stream(
                    name,
                    SubscriptionError(
                        f"Subscription failed (500): worker {shard} of stream '{name}' was "
                        f"restarted; {what}",
                        code=codes.SUBSCRIPTION_FAILED,
                        shard=shard,
                    ),
                )
        self.merges.restore(shard)
        if self._lost is not None and self._lost.shard == shard:
            self._lost = None  # the worker is back: new subscriptions are served again
        with self._lock:
            forwarded = sorted(self._forwarded)
        for name in forwarded:
            if name not in self.merges.runs:  # restore() re-subscribed the merged ones
                self._cluster.request(shard, protocol.Subscribe(self._cluster.new_rid(), name))

    def ingest(self, router: Any, source: str, rows: pa.Table, catalog: Catalog) -> None:
        """Buffer one insert call for shipping, keeping the cluster watermark (merged.py)."""
        for run in self.merges.ingest(router, source, rows, catalog):
            self._deliver(run)

    def watches(self, source: str, catalog: Catalog) -> bool:
        """Whether rows for `source` must come through `ingest` (merged.py), a file load's too."""
        return self.merges.watches(source, catalog)

    def advance_watermark(self, source: str, timestamp: int, catalog: Catalog) -> None:
        """A user's `Writer.watermark` reached every worker: the cluster clock follows it."""
        self.merges.advance(source, timestamp, catalog)

    def workers_watermark(self, source: str) -> int:
        """The workers' engines' watermark of `source` (cluster lock held)."""
        return self.merges.workers_watermark(source)

    def source_watermark(self, source: str) -> int | None:
        """The cluster watermark of `source` (None without a WATERMARK clause or before any)."""
        return self.merges.watermark(source)

    def pending(self, name: str) -> int:
        """Batches of stream `name` its most-behind subscriber has not read yet (0 without)."""
        with self._lock:
            feeds = list(self._feeds.get(name, ()))
        return max((feed.pending for feed in feeds), default=0)

    def cluster_watermark(self) -> int | None:
        """The highest cluster watermark over sources with one (None before any)."""
        marks = [
            m for m in map(self.merges.watermark, list(self.merges.clock_names())) if m is not None
        ]
        return max(marks) if marks else None

    def _deliver(self, run: merged.Run) -> None:
        """Hand the windows that `run` can emit now to its subscribers, in window order."""
        with run.merger.emit_lock:
            table = run.merger.ready()
            if table is None:
                return
            with self._lock:
                feeds = list(self._feeds.get(run.plan.stream, ()))
            refused = [feed for feed in feeds if not feed.put(table)]
            if refused:
                with self._lock:
                    current = self._feeds.get(run.plan.stream, [])
                    for feed in refused:
                        if feed in current:
                            current.remove(feed)

    def adopt(self, thread: threading.Thread) -> None:
        """A callback thread that `close` waits for (briefly) after ending its feed."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    # -- receiving (receiver thread) --------------------------------------------------------

    def _receive(self) -> None:
        sock = self._sock
        checked = time.monotonic()
        try:
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    self._dispatch(sock.recv_multipart(copy=False))
                if time.monotonic() - checked > LIVENESS_S:
                    checked = time.monotonic()
                    self._check_workers()
                    for run in list(self.merges.runs.values()):
                        self._deliver(run)  # windows whose partials stalled
        except Exception as exc:  # a bug here must not leave subscribers waiting for ever
            log.exception("stream receiver failed")
            self._fail_all(SubscriptionError(f"stream receiver failed: {exc}"))
        finally:
            sock.close(0)

    def _dispatch(self, frames: list[Any]) -> None:
        msg = protocol.decode_data(frames[0].buffer)
        run = self.merges.runs.get(getattr(msg, "stream", ""))
        if isinstance(msg, protocol.StreamBatch) and run is not None:
            if not run.timed and not run.plan.cumulative:  # no watermark: no window closes
                run.merger.count_unused(arrow_ipc.loads(frames[1].buffer).num_rows)
            else:
                table = arrow_ipc.loads(frames[1].buffer)
                if "__n" not in table.column_names:  # e.g. a worker restarted with the user's SQL
                    self._fail_stream(
                        msg.stream,
                        SubscriptionError(
                            f"Subscription failed (500): worker {msg.shard} no longer runs the "
                            f"partial form of stream '{msg.stream}'; subscribe again",
                            code=codes.SUBSCRIPTION_FAILED,
                            shard=msg.shard,
                        ),
                    )
                    return
                run.merger.add(table, msg.shard)
                self._deliver(run)
            return
        if isinstance(msg, protocol.StreamBatch):
            with self._lock:
                feeds = list(self._feeds.get(msg.stream, ()))
            if not feeds:
                return
            table = arrow_ipc.loads(frames[1].buffer)
            refused = [feed for feed in feeds if not feed.put(table)]
            if refused:
                with self._lock:
                    current = self._feeds.get(msg.stream, [])
                    for feed in refused:
                        if feed in current:
                            current.remove(feed)
        elif isinstance(msg, protocol.StreamFailed):
            stream = msg.stream
            error = SubscriptionError(
                f"Subscription failed (500): stream '{stream}' failed on worker "
                f"{msg.shard}: {msg.error.kind}: {msg.error.message}",
                code=codes.SUBSCRIPTION_FAILED,
                shard=msg.shard,
            )
            with self._lock:
                feeds = self._feeds.pop(stream, [])
            for feed in feeds:
                feed.fail(error)

    def _fail_stream(self, name: str, error: LaminarError) -> None:
        with self._lock:
            feeds = self._feeds.pop(name, [])
        for feed in feeds:
            feed.fail(error)

    def _check_workers(self) -> None:
        with self._lock:
            waiting = any(self._feeds.values())
        if not waiting or self._cluster.closed:
            return
        for worker in self._cluster.workers:
            if not worker.alive:
                self._lost = SubscriptionError(
                    f"Subscription failed (500): {worker.describe()} exited with code "
                    f"{worker.exitcode}; the results of its shard are lost",
                    code=codes.SUBSCRIPTION_FAILED,
                    shard=worker.shard,
                )
                self._fail_all(self._lost)
                return

    def _fail_all(self, error: LaminarError) -> None:
        with self._lock:
            feeds = [feed for feeds in self._feeds.values() for feed in feeds]
            self._feeds.clear()
        for feed in feeds:
            feed.fail(error)

    # -- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop receiving, end every subscription (their readers get None), wait for callback
        threads briefly; the data socket is closed by the receiver thread as it exits."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._receiver is not threading.current_thread():
            self._receiver.join()
        with self._lock:
            feeds = [feed for feeds in self._feeds.values() for feed in feeds]
            self._feeds.clear()
            threads = list(self._threads)
            self._threads.clear()
        for feed in feeds:
            feed.end()
        deadline = time.monotonic() + JOIN_S
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("callback thread %s still runs after close", thread.name)

    @property
    def closed(self) -> bool:
        return self._closed
