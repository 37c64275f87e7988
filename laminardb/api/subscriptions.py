"""Subscription classes of the native API.

`subscribe(sql)` is a one-shot snapshot in the native engine, and so it is here. Named-stream
subscriptions over sharded streams (merged partial aggregates, a cluster watermark, fan-out
to many subscribers) belong to the streams layer and are not served yet: the calls that
would return the stream classes below raise `StreamError` until then.
"""

from __future__ import annotations

from typing import Any

from laminardb.api.observe import BatchIterator


class Subscription(BatchIterator):
    """A one-shot snapshot of a query, iterated as QueryResult batches."""


class AsyncSubscription:
    """Asynchronous counterpart of `Subscription` (not served by the cluster yet)."""

    def __init__(self, *args: Any) -> None:
        raise TypeError("AsyncSubscription objects are created by Connection.subscribe_async()")


class StreamSubscription:
    """Subscription to a named stream (not served by the cluster yet)."""

    def __init__(self, *args: Any) -> None:
        raise TypeError("StreamSubscription objects are created by Connection.subscribe_stream()")


class AsyncStreamSubscription:
    """Asynchronous subscription to a named stream (not served by the cluster yet)."""

    def __init__(self, *args: Any) -> None:
        raise TypeError(
            "AsyncStreamSubscription objects are created by Connection.subscribe_stream_async()"
        )


class CallbackSubscription:
    """Push-based subscription with callbacks (not served by the cluster yet)."""

    def __init__(self, *args: Any) -> None:
        raise TypeError(
            "CallbackSubscription objects are created by Connection.subscribe_*_callback()"
        )
