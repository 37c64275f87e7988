"""The worker's side of stream subscriptions: it holds the one native consumer of each stream.

The native engine gives a stream's output to its first subscriber only; a stream that nobody
consumes back-pressures its sources once `buffer_size` results are pending; and its
subscription objects deadlock or freeze the process when two threads use one at once, and
never return from `next_timeout` once their connection is closed (research §4.5, and checked
again for this module). So:

* the worker subscribes every user stream itself as soon as the stream exists (`sync`), so
  it is always the first and only consumer and no stream ever fills up;
* one thread per stream polls its subscription with `next_timeout(POLL_MS)`, never a
  blocking `next()`; that thread alone touches the subscription from then on and cancels it;
* results of a stream the coordinator asked for (`forward`) are pushed as Arrow IPC on the
  data channel (a ZeroMQ PUSH socket, shared by the threads under a lock); results of other
  streams are dropped, so a subscriber gets what was produced after it subscribed;
* `stop` joins the threads before their engine is closed or replaced. When the engine is
  rebuilt (`workers.engine.Engine.rebuild`), the old consumers first forward whatever the
  old engine still produces (`stop(drain=True)`), the new engine's streams are subscribed
  before it starts (`prepare`), and the output of the rows replayed into it is dropped
  (`resume`), so a rebuild neither loses nor repeats results.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import zmq

from laminardb.api.errors import codes, to_wire
from laminardb.streams.clock import epoch_ms
from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb.worker.streams")

POLL_MS = 50
"""How long a consumer waits in `next_timeout`: the bound on how late it notices `stop`."""
SEND_POLL_MS = 100
HIGH_WATER = 1000
"""Result batches queued towards the coordinator before a consumer waits (and its stream,
then its sources, feel backpressure)."""
QUIESCE_POLL_S = 0.005
TAKE_POLL_S = 0.001
"""Polls for the taking of pending batches: a cycle takes and ends within a few ms, and
`quiesce` can only tell that it ended when one poll falls in between."""
QUIESCE_LIMIT_S = 10.0
CYCLE_GRACE_S = 0.25
"""Longer than one pipeline cycle (about 100 ms): a batch taken by a cycle has produced its
results by then."""


class _Consumer:
    """The thread that owns one native stream subscription."""

    def __init__(self, pump: StreamPump, name: str, subscription: Any):
        self.pump = pump
        self.name = name
        self.subscription = subscription
        self.stopping = threading.Event()
        self.drain = False
        self.abandon = False
        self.thread = threading.Thread(target=self._run, name=f"ldb-stream-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def request_stop(self, drain: bool) -> None:
        self.drain = drain
        self.abandon = not drain
        self.stopping.set()

    def _run(self) -> None:
        sub = self.subscription
        try:
            while not self.stopping.is_set():
                try:
                    result = sub.next_timeout(POLL_MS)
                except Exception as exc:
                    if getattr(exc, "code", None) == codes.SUBSCRIPTION_TIMEOUT:
                        continue
                    raise
                if result is None:
                    return  # the subscription ended
                self.pump.emit(self, result)
            if self.drain:
                while (result := sub.try_next()) is not None:
                    self.pump.emit(self, result)
        except Exception as exc:
            log.exception("consumer of stream %s failed", self.name)
            self.pump.failed(self.name, exc)
        finally:
            with contextlib.suppress(Exception):
                sub.cancel()  # same thread, after next_timeout returned: no deadlock


class StreamPump:
    """Every stream consumer of one worker, and the data channel they push results on."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, shard: int):
        self.shard = shard
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HIGH_WATER)
        self.sock.connect(endpoint)
        self.send_lock = threading.Lock()
        self.consumers: dict[str, _Consumer] = {}
        self.forwarding: set[str] = set()
        self.skipped: set[str] = set()  # streams the engine refuses to subscribe (views)
        self.closed = False

    def hello(self) -> None:
        """Greet on the data channel; the coordinator waits for it before it removes the
        endpoint's file, so the connection is made while the file still exists."""
        self.sock.send(protocol.encode(protocol.PushHello(self.shard)))

    # -- consumers --------------------------------------------------------------------------

    def sync(self, conn: Any) -> None:
        """Consume every user stream of `conn` (new ones from now), stop those dropped."""
        names = _stream_names(conn)
        self.skipped &= names
        for name in names - set(self.consumers) - self.skipped:
            try:
                subscription = conn.subscribe_stream(name)
            except Exception as exc:  # e.g. a materialized view: not subscribable natively
                log.debug("stream %s cannot be subscribed: %s", name, exc)
                self.skipped.add(name)
                continue
            self._start(name, subscription)
        gone = [c for name, c in self.consumers.items() if name not in names]
        self._join(gone, drain=True)
        for consumer in gone:
            self.consumers.pop(consumer.name, None)
            self.forwarding.discard(consumer.name)

    def forward(self, conn: Any, name: str, on: bool) -> None:
        """Start (or stop) pushing `name`'s results; the engine's own error if it has no such
        stream or cannot subscribe it."""
        if not on:
            self.forwarding.discard(name)
            return
        if name not in self.consumers:
            self._start(name, conn.subscribe_stream(name))  # raises the native error
        self.forwarding.add(name)

    def prepare(self, conn: Any) -> dict[str, Any]:
        """Subscriptions to every stream of a fresh engine, taken before it starts."""
        out: dict[str, Any] = {}
        for name in _stream_names(conn):
            try:
                out[name] = conn.subscribe_stream(name)
            except Exception as exc:
                log.debug("stream %s cannot be subscribed: %s", name, exc)
        return out

    def stop(self, drain: bool) -> None:
        """Stop every consumer and wait for it. With `drain`, each first pushes the results
        its engine already produced; without, results still queued for sending are dropped."""
        self._join(list(self.consumers.values()), drain)
        self.consumers.clear()

    def resume(self, subscriptions: dict[str, Any]) -> None:
        """Consume `subscriptions` (from `prepare`) after dropping what they hold now: the
        output of rows replayed into a rebuilt engine, which subscribers already had."""
        self.skipped.clear()
        for name, subscription in subscriptions.items():
            dropped = 0
            while subscription.try_next() is not None:
                dropped += 1
            if dropped:
                log.info("stream %s: %d replayed result batches dropped", name, dropped)
            self._start(name, subscription)

    def close(self) -> None:
        """Stop the consumers (results not yet sent are dropped) and close the socket."""
        self.closed = True
        self.stop(drain=False)
        self.sock.close(0)

    def _start(self, name: str, subscription: Any) -> None:
        consumer = _Consumer(self, name, subscription)
        self.consumers[name] = consumer
        consumer.start()

    def _join(self, consumers: list[_Consumer], drain: bool) -> None:
        for consumer in consumers:
            consumer.request_stop(drain)
        for consumer in consumers:
            consumer.thread.join()

    # -- sending (consumer threads) ---------------------------------------------------------

    def emit(self, consumer: _Consumer, result: Any) -> None:
        """Push one result of `consumer`'s stream if the coordinator wants it."""
        if consumer.name not in self.forwarding:
            return
        table = result.to_arrow()
        if table.num_rows == 0:
            return
        header = protocol.encode(protocol.StreamBatch(self.shard, consumer.name))
        self._send([header, arrow_ipc.dumps(table)], consumer)

    def failed(self, name: str, exc: BaseException) -> None:
        """Tell the coordinator that `name` will produce nothing more from this worker."""
        kind, message, code = to_wire(exc)
        error = protocol.ErrorInfo(kind, message, code)
        self._send([protocol.encode(protocol.StreamFailed(self.shard, name, error))], None)

    def _send(self, frames: list[Any], consumer: _Consumer | None) -> None:
        with self.send_lock:
            while not self.closed and not (consumer is not None and consumer.abandon):
                try:
                    self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    self.sock.poll(SEND_POLL_MS, zmq.POLLOUT)


def _stream_names(conn: Any) -> set[str]:
    return {s.name for s in conn.streams()}


def quiesce(conn: Any, since: float, consumed: Collection[str] | None = None) -> None:
    """Wait until a started engine has turned every inserted batch into results.

    The engine offers no event for this, so its metrics are polled. One cycle runs at a
    time; it takes every pending batch as it starts (`pending` drops to 0) and counts
    itself in `total_cycles` as it ends (only cycles with data count). So the wait is first
    until no source of `consumed` (None: every source) holds a batch that no cycle took,
    then until the cycle that took the last one has ended: with `c` cycles counted at the
    last poll that saw a batch pending, that is `c + 1` cycles if none had ended by the
    first poll that saw none (no cycle was under way at the earlier poll), else `c + 2`
    (the one under way then, and the one that took the batch). When it cannot tell (the
    second case, or nothing pending from the start), the wait ends at most `CYCLE_GRACE_S`
    after the last batch was taken or the last insert (`since`, a `time.monotonic()`
    value). A source the pipeline does not consume (one created after `start()`) keeps its
    batches pending for ever, so it must be left out of `consumed`, else every call waits
    `QUIESCE_LIMIT_S`.
    """
    limit = time.monotonic() + QUIESCE_LIMIT_S
    settled_at = since
    seen_pending: int | None = None  # total_cycles at the last poll that saw a batch pending
    while True:
        cycles = conn.metrics().total_cycles
        if not any(
            m.pending and (consumed is None or m.name in consumed)
            for m in conn.all_source_metrics()
        ):
            break
        if time.monotonic() > limit:
            log.warning("engine did not take its pending batches within %.0f s", QUIESCE_LIMIT_S)
            return
        seen_pending = cycles
        time.sleep(TAKE_POLL_S)
        settled_at = time.monotonic()
    if seen_pending is None:
        target = cycles + 1
    else:
        target = seen_pending + (1 if cycles == seen_pending else 2)
    while time.monotonic() < settled_at + CYCLE_GRACE_S:
        if conn.metrics().total_cycles >= target:
            return
        time.sleep(QUIESCE_POLL_S)


def lowest_event_ms(table: pa.Table, column: str | None) -> int | None:
    """The lowest event time among `table`'s rows as the engine compares it with a
    watermark (`clock.epoch_ms`), or None when it cannot be known: no event column, a NULL,
    a type other than an integer or a timestamp."""
    if column is None or column not in table.column_names or not table.num_rows:
        return None
    values = table.column(column)
    typ = values.type
    if values.null_count or not (pa.types.is_integer(typ) or pa.types.is_timestamp(typ)):
        return None
    lowest = pc.min(values)
    if pa.types.is_integer(typ):
        return int(lowest.as_py())
    # the lowest instant converted, not the column: truncation keeps the order, and a
    # column's conversion is a copy of it on every insert
    one = pa.chunked_array([pa.array([lowest.value], pa.int64()).cast(typ)])
    return int(epoch_ms(one)[0].as_py())
