"""Subscription classes of the native API, served by the coordinator's streams layer.

`subscribe(sql)`, `subscribe_async(sql)` and `subscribe_callback(sql, ...)` are one-shot
snapshots of a query in the native engine, and so they are here. Named-stream subscriptions
read a `Feed` that the stream hub (laminardb/streams/hub.py) fills with the batches every
worker produces, so any number of them can follow one stream.

Differences from native, each deliberate: `next_timeout` raises `SubscriptionError` (502) on
timeout like native, and so does nothing else; `cancel()` and `Connection.close()` from any
thread return at once and wake a thread waiting in `next()` (native deadlocks there), which
then gets None (iteration stops); `schema` is the schema of the latest batch (before the
first one, the stream's schema as the engine declares it; native always gives an empty one);
a subscriber that falls too far behind gets `SubscriptionError` (500) instead of unbounded
memory; a one-shot callback subscription ends once its batches are delivered.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pyarrow as pa

from laminardb.api.args import unsigned_arg
from laminardb.api.errors import LaminarError, SubscriptionError, codes
from laminardb.api.observe import BatchIterator
from laminardb.api.results import QueryResult
from laminardb.streams.feed import Empty, Feed

Release = Callable[[Feed], None]


def _discard(feed: Feed) -> None:
    feed.discard()


def _timeout() -> SubscriptionError:
    return SubscriptionError(
        "Subscription timeout (502): Subscription timeout", code=codes.SUBSCRIPTION_TIMEOUT
    )


def _result(table: pa.Table | None) -> QueryResult | None:
    return None if table is None else QueryResult(table)


class Subscription(BatchIterator):
    """A one-shot snapshot of a query, iterated as QueryResult batches."""


class _FeedReader:
    """What the stream subscription classes share: reading, cancelling, state."""

    _kind = "StreamSubscription"

    def __init__(self, feed: Feed, release: Release = _discard):
        self._feed = feed
        self._release = release
        # Forgotten without cancel(): stop buffering for it. Only the feed is touched, since a
        # finalizer may run in any thread, even one in the middle of a request to the workers.
        weakref.finalize(self, feed.discard)

    @property
    def is_active(self) -> bool:
        return self._feed.active

    @property
    def schema(self) -> Any:
        """The stream's schema as a pyarrow.Schema (that of the latest batch once one came)."""
        return self._feed.schema if self._feed.schema is not None else pa.schema([])

    def next(self) -> QueryResult | None:
        """Wait for the next batch; None once the subscription is cancelled or closed."""
        return _result(self._feed.get(None))

    def next_timeout(self, timeout_ms: int) -> QueryResult | None:
        """Wait up to `timeout_ms` for the next batch; SubscriptionError (502) on timeout."""
        wait_s = min(unsigned_arg("timeout_ms", timeout_ms) / 1000, threading.TIMEOUT_MAX)
        try:
            return _result(self._feed.get(wait_s))
        except Empty:
            raise _timeout() from None

    def try_next(self) -> QueryResult | None:
        """The next batch if one is waiting, else None."""
        try:
            return _result(self._feed.get(0))
        except Empty:
            return None

    def cancel(self) -> None:
        """Stop the subscription; safe from any thread, also while another waits in next()."""
        self._release(self._feed)

    def __repr__(self) -> str:
        state = "active" if self.is_active else "cancelled"
        return f"{self._kind}({state})"


class StreamSubscription(_FeedReader):
    """Subscription to a named stream: every batch produced after it subscribed."""

    def __iter__(self) -> Iterator[QueryResult]:
        return self

    def __next__(self) -> QueryResult:
        result = self.next()
        if result is None:
            raise StopIteration
        return result


class _AsyncFeedIterator:
    """`async for` over a feed's batches, ending when the feed does."""

    _feed: Feed

    def __aiter__(self) -> AsyncIterator[QueryResult]:
        return self

    async def __anext__(self) -> QueryResult:
        table = await self._feed.get_async()
        if table is None:
            raise StopAsyncIteration
        return QueryResult(table)


class AsyncStreamSubscription(_AsyncFeedIterator, _FeedReader):
    """Asynchronous subscription to a named stream (`async for`); `next`, `next_timeout` and
    `try_next` are synchronous like native's."""

    _kind = "AsyncStreamSubscription"


class AsyncSubscription(_AsyncFeedIterator):
    """Asynchronous one-shot snapshot of a query, iterated with `async for`."""

    def __init__(self, feed: Feed):
        self._feed = feed

    @property
    def is_active(self) -> bool:
        return self._feed.active

    def cancel(self) -> None:
        self._feed.discard()

    def __repr__(self) -> str:
        return f"AsyncSubscription({'active' if self.is_active else 'cancelled'})"


class CallbackSubscription:
    """Push-based subscription: a thread calls `on_data(QueryResult)` for each batch.

    Like native, an exception in `on_data` is passed to `on_error` as "Type: message" and the
    subscription goes on; it stops when `on_error` is missing or raises, on a failure of the
    subscription itself (reported to `on_error` first), on `cancel()` and on close.
    """

    def __init__(
        self,
        feed: Feed,
        on_data: Callable[[QueryResult], None],
        on_error: Callable[[str], None] | None,
        release: Release = _discard,
        kind: str = "stream",
        adopt: Callable[[threading.Thread], None] | None = None,
    ):
        self._feed = feed
        self._on_data = on_data
        self._on_error = on_error
        self._release = release
        self._kind = kind
        self._cancelled = False
        self._thread = threading.Thread(
            target=self._run, name=f"laminardb-callback-{feed.stream}", daemon=True
        )
        if adopt is not None:
            adopt(self._thread)  # the connection waits for it on close
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    table = self._feed.get(None)
                except LaminarError as exc:
                    self._report(str(exc))
                    return
                if table is None:
                    return
                try:
                    self._on_data(QueryResult(table))
                except Exception as exc:
                    if not self._report(f"{type(exc).__name__}: {exc}"):
                        return
        finally:
            self._release(self._feed)

    def _report(self, message: str) -> bool:
        """Pass an error to on_error; False when the subscription must stop."""
        if self._on_error is None:
            return False
        try:
            self._on_error(message)
        except Exception:
            return False
        return True

    @property
    def is_active(self) -> bool:
        """Whether the callback thread is still running."""
        return self._thread.is_alive() and not self._cancelled

    def cancel(self) -> None:
        """Stop the subscription (the current callback finishes). Safe to call multiple times."""
        self._cancelled = True
        self._release(self._feed)

    def wait(self) -> None:
        """Block until the callback thread exits."""
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __repr__(self) -> str:
        state = "active" if self.is_active else "cancelled"
        return f"CallbackSubscription({self._kind}, {state})"
