"""One subscriber's bounded buffer of result batches, readable from threads and from asyncio.

The receiver thread puts batches in (`put`); the subscriber takes them out (`get`, or
`get_async` in a coroutine). The buffer is bounded in batches and in bytes: a subscriber that
falls so far behind that it would exceed either bound is failed at once with a
`SubscriptionError` (its buffer is freed) instead of holding unbounded memory or slowing
every other subscriber of the stream. Ending (cancel, connection closed) and failing wake
every waiter, in threads and in event loops alike, so nobody stays blocked in `next()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterable

import pyarrow as pa

from laminardb.api.errors import LaminarError, SubscriptionError, codes

MAX_BATCHES = 1024
MAX_BYTES = 256 << 20
WAIT_SLICE_S = 0.5
"""A blocking wait wakes this often (so that signals reach a waiting main thread)."""


class Empty(Exception):
    """Nothing arrived within the time asked for."""


class Feed:
    """Batches of stream `stream` for one subscriber, in arrival order."""

    def __init__(
        self,
        stream: str,
        max_batches: int = MAX_BATCHES,
        max_bytes: int = MAX_BYTES,
        schema: pa.Schema | None = None,
    ):
        self.stream = stream
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self.schema = schema
        self._cond = threading.Condition()
        self._items: collections.deque[pa.Table] = collections.deque()
        self._bytes = 0
        self._ended = False
        self._error: LaminarError | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @classmethod
    def finished(cls, stream: str, tables: Iterable[pa.Table], schema: pa.Schema) -> Feed:
        """A feed that holds `tables` and then ends (the one-shot query subscriptions)."""
        feed = cls(stream, max_batches=2**62, max_bytes=2**62, schema=schema)
        for table in tables:
            feed.put(table)
        feed.end()
        return feed

    # -- producer side (receiver thread) ---------------------------------------------------

    def put(self, table: pa.Table) -> bool:
        """Queue one batch; False when the feed takes no more (ended, failed, or just overflowed)."""
        size = table.nbytes
        with self._cond:
            if self._ended or self._error is not None:
                return False
            if len(self._items) >= self.max_batches or (
                self._items and self._bytes + size > self.max_bytes
            ):
                self._error = SubscriptionError(
                    f"Subscription failed (500): the subscriber of stream '{self.stream}' fell "
                    f"behind: more than {self.max_batches} batches or {self.max_bytes} bytes "
                    "were waiting to be read, so the subscription was closed and its buffer "
                    "freed; read faster, or subscribe again",
                    code=codes.SUBSCRIPTION_FAILED,
                )
                self._items.clear()
                self._bytes = 0
                self._wake()
                return False
            self._items.append(table)
            self._bytes += size
            self.schema = table.schema
            self._wake()
            return True

    def fail(self, error: LaminarError) -> None:
        """End the feed with `error`, raised by the next read; queued batches are dropped."""
        with self._cond:
            if self._ended or self._error is not None:
                return
            self._error = error
            self._items.clear()
            self._bytes = 0
            self._wake()

    def end(self) -> None:
        """No more batches will come: reads return what is queued, then None."""
        with self._cond:
            self._ended = True
            self._wake()

    def discard(self) -> None:
        """End the feed and drop what it holds (a cancelled subscription)."""
        with self._cond:
            self._ended = True
            self._items.clear()
            self._bytes = 0
            self._wake()

    @property
    def active(self) -> bool:
        """False once ended or failed."""
        return not self._ended and self._error is None

    def _wake(self) -> None:
        self._cond.notify_all()
        for loop, future in self._waiters:
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    @property
    def pending(self) -> int:
        """Batches queued and not yet read (native `stream_metrics().pending`)."""
        with self._cond:
            return len(self._items)

    # -- consumer side ----------------------------------------------------------------------

    def _take(self) -> pa.Table | None:
        """A queued batch, None when ended and empty; raises the failure, or Empty."""
        if self._error is not None:
            raise self._error
        if self._items:
            table = self._items.popleft()
            self._bytes -= table.nbytes
            return table
        if self._ended:
            return None
        raise Empty

    def get(self, timeout: float | None) -> pa.Table | None:
        """The next batch, waiting up to `timeout` seconds (None: until one comes).

        None once the feed has ended and is empty; raises its failure, or `Empty` on timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                try:
                    return self._take()
                except Empty:
                    if deadline is None:
                        self._cond.wait(WAIT_SLICE_S)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    self._cond.wait(min(left, WAIT_SLICE_S))

    async def get_async(self) -> pa.Table | None:
        """Like `get(None)`, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                try:
                    return self._take()
                except Empty:
                    future: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, future))
            try:
                await future
            finally:
                with self._cond, contextlib.suppress(ValueError):
                    self._waiters.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
