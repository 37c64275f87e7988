"""Named-stream subscriptions over the cluster, for streams whose per-worker outputs merge by union.

Differential: the same DDL and the same inserts (one insert call per tick, each shipped as
one engine batch per worker) go to one `laminardb_native` instance and to the cluster; the
multiset of rows each side's subscribers receive must be identical (compared per window for
the tumbling aggregate). Every tick's rows are in order or out of order within the watermark
delay, so no row is late anywhere, and the last tick carries every device at a far later
timestamp, so every worker's own watermark passes every earlier window, as the one
instance's does. (Rows late for the whole stream but not for their own worker, and windows
held open by a worker whose rows lag, are what the cluster watermark of issue 4 must fix.)

Each database has one source at a time: the native engine drops the stream output of every
cycle in which some but not all of the sources that streams read got data (checked on
native; on a worker every source is read, by its drain stream), and closes windows by the
lowest watermark of all its sources. The tests that share one cluster drop what they created.

Waits poll with deadlines (`next_timeout`), never sleep for a fixed time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

import laminardb
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.ingest import partition
from laminardb.streams.union import why_not_union

pytestmark = pytest.mark.timeout(120)

DELAY_MS = 2000
DEVICES = [f"d{i}" for i in range(12)]
SOURCE = (
    "CREATE SOURCE {name} (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND){partition}"
)
FILTER = "CREATE STREAM f AS SELECT ts, device, value * 2 AS v2 FROM ev WHERE value > 0.5"
PER_DEVICE = (
    "CREATE STREAM per_dev AS SELECT device, tumble(ts, INTERVAL '5' SECOND) AS ws, "
    "COUNT(*) AS cnt, SUM(value) AS total FROM ev "
    "GROUP BY device, tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE"
)
Row = tuple[Any, ...]


# -- data and helpers ---------------------------------------------------------------------------


def ticks(seed: int, n: int = 14) -> list[list[Row]]:
    """Rows per insert call: (ts, device, value), values whole numbers (exact float sums)."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        now = 1000 * i
        rows = [
            (now - rng.randint(0, 1500), rng.choice(DEVICES), float(rng.randint(1, 9)))
            for _ in range(rng.randint(2, 7))
        ]
        rows[0] = (now, *rows[0][1:])  # every tick moves the stream's watermark
        out.append(rows)
    out.append([(1000 * n + 20_000, d, 5.0) for d in DEVICES])  # advances every worker
    return out


def columns(rows: list[Row]) -> dict[str, list[Any]]:
    return {
        "ts": [r[0] for r in rows],
        "device": [r[1] for r in rows],
        "value": [r[2] for r in rows],
    }


def expected_windows(data: list[list[Row]]) -> Counter[tuple[Any, ...]]:
    """(device, window_start, count, sum) of every window that the last tick closes."""
    last = max(ts for ts, _, _ in data[-1]) - DELAY_MS
    acc: dict[tuple[str, int], list[float]] = {}
    for rows in data:
        for ts, device, value in rows:
            start = ts // 5000 * 5000
            if start + 5000 <= last:
                acc.setdefault((device, start), []).append(value)
    return Counter((d, s, len(v), sum(v)) for (d, s), v in acc.items())


def read(sub: Any, want: int, timeout_s: float = 20.0, rows: list[Row] | None = None) -> list[Row]:
    """Rows from `sub` (added to `rows`) until at least `want` arrived or the deadline passed."""
    rows = [] if rows is None else rows
    deadline = time.monotonic() + timeout_s
    while len(rows) < want and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(100)
        except laminardb_errors() as exc:
            if getattr(exc, "code", None) != 502:
                raise
            continue
        if batch is not None:
            rows.extend(batch.fetchall())
    return rows


def laminardb_errors() -> tuple[type[Exception], ...]:
    return (laminardb.SubscriptionError, native.SubscriptionError)


def assert_quiet(sub: Any, ms: int = 300) -> None:
    """Nothing more arrives (no duplicates after the expected rows)."""
    with pytest.raises(laminardb.SubscriptionError) as info:
        extra = sub.next_timeout(ms)
        pytest.fail(f"unexpected extra batch {extra.fetchall() if extra else extra}")
    assert info.value.code == 502


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def per_window(rows: list[Row]) -> dict[int, Counter[Row]]:
    out: dict[int, Counter[Row]] = {}
    for row in rows:
        out.setdefault(row[0], Counter())[row] += 1
    return out


def assert_same_windows(got: Counter[Row], expected: Counter[Row], what: str) -> None:
    """Equal multisets of rows per window (row[0]); the message names the differing rows."""
    assert per_window(list(got.elements())) == per_window(list(expected.elements())), (
        f"{what}: only ours {sorted((got - expected).elements())}, "
        f"only native {sorted((expected - got).elements())}"
    )


def insert_tick(ours: Any, theirs: Any, source: str, rows: list[Row]) -> None:
    """One insert call per side; ours shipped at once, so it stays one engine batch."""
    theirs.insert(source, pa.table(columns(rows), schema=SCHEMA))
    writer = ours.writer(source)
    writer.insert(columns(rows))
    writer.flush()


SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])


@pytest.fixture(scope="module")
def db() -> Iterator[Any]:
    """A 2-worker cluster for the tests that need no native twin (own names per test)."""
    conn = laminardb.open(":memory:", workers=2)
    yield conn
    conn.close()


def keyed_source(conn: Any, name: str) -> None:
    conn.execute(SOURCE.format(name=name, partition=" PARTITION BY (device)"))


class Scratch:
    """Creates objects in the shared cluster and drops them again (newest first)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.created: list[tuple[str, str]] = []

    def source(self, name: str, keyed: bool = True) -> None:
        self.conn.execute(SOURCE.format(name=name, partition=" PARTITION BY (device)" * keyed))
        self.created.append(("SOURCE", name))

    def stream(self, sql: str) -> None:
        self.conn.execute(sql)
        kind = "MATERIALIZED VIEW" if "MATERIALIZED VIEW" in sql else "STREAM"
        self.created.append((kind, sql.split(" AS ", 1)[0].split()[-1]))

    def drop(self) -> None:
        for kind, name in reversed(self.created):
            self.conn.execute(f"DROP {kind} IF EXISTS {name}")


@pytest.fixture
def scratch(db: Any) -> Iterator[Scratch]:
    made = Scratch(db)
    yield made
    made.drop()


def our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("laminardb")}


# -- differential -----------------------------------------------------------------------------


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "round-robin"])
@pytest.mark.parametrize("workers", [2, 3])
def test_union_streams_match_native(workers: int, keyed: bool) -> None:
    shards = partition.split(pa.table({"device": DEVICES}), ["device"], workers)
    assert all(part.num_rows for part in shards), "every worker must own some devices"
    data = ticks(seed=workers + 10 * keyed)
    windows = expected_windows(data)
    rows_in = sum(len(rows) for rows in data)
    streams = {"f": FILTER} | ({"per_dev": PER_DEVICE} if keyed else {})
    fanned = "per_dev" if keyed else "f"
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=workers)
    try:
        for conn, key in ((theirs, ""), (ours, " PARTITION BY (device)" if keyed else "")):
            conn.execute(SOURCE.format(name="ev", partition=key))
            for sql in streams.values():
                conn.execute(sql)
        native_subs = {name: theirs.subscribe_stream(name) for name in streams}
        subs = {name: ours.subscribe_stream(name) for name in streams}
        # More subscribers of one stream, through every API: each must get everything.
        from_callback: list[Row] = []
        lock = threading.Lock()

        def on_data(batch: Any) -> None:
            with lock:
                from_callback.extend(batch.fetchall())

        callback = ours.subscribe_stream_callback(fanned, on_data)
        from_view = laminardb.mv(ours, fanned).subscribe()
        assert isinstance(from_view, laminardb.StreamSubscription)
        theirs.start()
        ours.start()
        for rows in data:
            insert_tick(ours, theirs, "ev", rows)

        received: dict[str, Counter[Row]] = {}
        for name in streams:
            want = rows_in if name == "f" else len(windows)
            expected = Counter(read(native_subs[name], want))
            received[name] = Counter(read(subs[name], want))
            assert sum(expected.values()) == want, f"native {name} gave {len(expected)} rows"
            assert_same_windows(received[name], expected, name)
            assert_quiet(subs[name])
        fanned_rows = received[fanned]
        want = sum(fanned_rows.values())
        assert_same_windows(Counter(read(from_view, want)), fanned_rows, "MaterializedView")
        assert wait_until(lambda: len(from_callback) >= want)
        with lock:
            assert_same_windows(Counter(from_callback), fanned_rows, "callback")
        if keyed:  # the model agrees: (device, window_start, cnt, total) of each closed window
            model = Counter((r[2], r[0], r[4], r[5]) for r in received["per_dev"].elements())
            assert model == windows
        callback.cancel()
        callback.wait()
        assert not callback.is_active
    finally:
        theirs.close()
        ours.close()


# -- fan-out, late subscribers, rebuilds ----------------------------------------------------


def test_late_subscriber_gets_only_later_batches_and_rebuild_loses_nothing(
    db: Any, scratch: Scratch
) -> None:
    scratch.source("rb")
    scratch.stream("CREATE STREAM rb_all AS SELECT ts, device, value FROM rb")
    early = db.subscribe_stream("rb_all")
    db.start()
    first = [(1000, d, 1.0) for d in DEVICES]
    db.insert("rb", columns(first))
    assert Counter(read(early, len(first))) == Counter(first)
    late = db.subscribe_stream("rb_all")
    # A stream created after start rebuilds every worker's engine (the retained rows are
    # replayed into it): the subscribers must see neither a gap nor the replay.
    rebuilds = [stats["rebuilds"] for stats in db._broadcast_call("stats", [])]
    scratch.stream("CREATE STREAM rb_big AS SELECT ts, device FROM rb WHERE value > 1")
    assert [s["rebuilds"] for s in db._broadcast_call("stats", [])] == [n + 1 for n in rebuilds]
    big = db.subscribe_stream("rb_big")
    second = [(4000, d, 2.0) for d in DEVICES]
    db.insert("rb", columns(second))
    assert Counter(read(early, len(second))) == Counter(second)
    assert Counter(read(late, len(second))) == Counter(second)
    assert Counter(read(big, len(second))) == Counter((ts, d) for ts, d, _ in second)
    for sub in (early, late, big):
        assert_quiet(sub)
        sub.cancel()
    assert db.sql("SELECT count(*) FROM rb").fetchall() == [(2 * len(DEVICES),)]


def test_unknown_stream_and_view_fail_like_native(db: Any, scratch: Scratch) -> None:
    with pytest.raises(laminardb.SchemaError, match=r"Table not found \(200\).*nope") as info:
        db.subscribe_stream("nope")
    assert info.value.code == 200
    scratch.source("mvsrc")
    scratch.stream("CREATE MATERIALIZED VIEW mv_rows AS SELECT ts, device FROM mvsrc")
    with pytest.raises(laminardb.SchemaError, match="mv_rows"):  # native cannot either
        db.subscribe_stream("mv_rows")


# -- cancel and close from other threads -----------------------------------------------------


def test_cancel_from_another_thread_wakes_a_waiting_next(db: Any, scratch: Scratch) -> None:
    scratch.source("cx")
    scratch.stream("CREATE STREAM cx_all AS SELECT ts, device FROM cx")
    sub = db.subscribe_stream("cx_all")
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(sub.next()))
    waiter.start()
    assert wait_until(lambda: waiter.is_alive())
    started = time.monotonic()
    sub.cancel()
    waiter.join(5)
    assert not waiter.is_alive() and got == [None]
    assert time.monotonic() - started < 1.0
    assert not sub.is_active and repr(sub) == "StreamSubscription(cancelled)"
    assert list(sub) == [] and sub.try_next() is None
    sub.cancel()  # twice is fine


def test_close_from_another_thread_wakes_waiters_and_leaves_nothing() -> None:
    before = our_threads()
    conn = laminardb.open(":memory:", workers=2)
    keyed_source(conn, "cl")
    conn.execute("CREATE STREAM cl_all AS SELECT ts, device FROM cl")
    sub = conn.subscribe_stream("cl_all")
    calls: list[Any] = []
    callback = conn.subscribe_stream_callback("cl_all", calls.append)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.extend(list(sub)))
    waiter.start()
    closer = threading.Thread(target=conn.close)
    started = time.monotonic()
    closer.start()
    closer.join(15)
    waiter.join(5)
    assert not closer.is_alive() and not waiter.is_alive() and got == []
    assert time.monotonic() - started < 10.0
    assert not callback.is_active
    callback.wait()
    assert conn.is_closed
    assert our_threads() <= before, [t.name for t in our_threads() - before]
    with pytest.raises(laminardb.ConnectionError):
        conn.subscribe_stream("cl_all")


def test_slow_subscriber_fails_clearly_and_a_dead_worker_ends_subscriptions() -> None:
    with laminardb.open(":memory:", workers=1, subscription_batches=3) as conn:
        keyed_source(conn, "sl")
        conn.execute("CREATE STREAM sl_all AS SELECT ts, device FROM sl")
        slow = conn.subscribe_stream("sl_all")
        fast = conn.subscribe_stream("sl_all")
        conn.start()
        rows = 0
        for i in range(6):
            conn.insert("sl", columns([(1000 * (i + 1), "a", 1.0)]))
            conn.writer("sl").flush()
            rows += len(read(fast, 1))
        assert rows == 6  # the fast subscriber is unaffected
        assert wait_until(lambda: not slow.is_active)
        with pytest.raises(laminardb.SubscriptionError, match="fell behind") as info:
            slow.next()
        assert info.value.code == 500
        # One worker holds every row, so any stream is served, a global count too.
        conn.execute("CREATE STREAM sl_count AS SELECT count(*) AS n FROM sl")
        conn.subscribe_stream("sl_count").cancel()
        # A worker that dies fails its subscribers (naming it) instead of leaving them waiting.
        os.kill(conn.workers()[0].pid, signal.SIGKILL)
        with pytest.raises(laminardb.SubscriptionError, match=r"worker 0 \(pid \d+\)"):
            fast.next()


# -- async and callbacks ---------------------------------------------------------------------


async def test_async_stream_subscription(db: Any, scratch: Scratch) -> None:
    scratch.source("asy")
    scratch.stream("CREATE STREAM asy_all AS SELECT ts, device FROM asy")
    sub = await db.subscribe_stream_async("asy_all")
    assert isinstance(sub, laminardb.AsyncStreamSubscription)
    db.start()
    db.insert("asy", columns([(1000, d, 1.0) for d in DEVICES]))
    got: list[Row] = []

    async def collect() -> None:
        async for batch in sub:
            got.extend(batch.fetchall())
            if len(got) >= len(DEVICES):
                return

    await asyncio.wait_for(collect(), 20)
    assert Counter(got) == Counter((1000, d) for d in DEVICES)
    assert sub.try_next() is None
    with pytest.raises(laminardb.SubscriptionError) as info:
        sub.next_timeout(20)
    assert info.value.code == 502
    # A cancel from another thread ends a pending `async for` step promptly.
    threading.Timer(0.1, sub.cancel).start()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(sub.__anext__(), 5)
    assert not sub.is_active


async def test_one_shot_query_subscriptions_like_native(db: Any, scratch: Scratch) -> None:
    scratch.source("one")
    db.insert("one", columns([(1, "a", 1.0), (2, "b", 2.0)]))
    sql = "SELECT ts, device FROM one ORDER BY ts LIMIT 10"
    sub = await db.subscribe_async(sql)
    assert [row async for batch in sub for row in batch.fetchall()] == [(1, "a"), (2, "b")]
    seen: list[Row] = []
    callback = db.subscribe_callback(sql, lambda batch: seen.extend(batch.fetchall()))
    callback.wait()  # ends once delivered (native's never does)
    assert seen == [(1, "a"), (2, "b")] and not callback.is_active


def test_callback_errors_go_to_on_error_and_the_subscription_goes_on(
    db: Any, scratch: Scratch
) -> None:
    scratch.source("cb")
    scratch.stream("CREATE STREAM cb_all AS SELECT ts, device FROM cb")
    errors: list[str] = []
    calls: list[int] = []

    def on_data(batch: Any) -> None:
        calls.append(batch.num_rows)
        raise ValueError("boom")

    callback = db.subscribe_stream_callback("cb_all", on_data, errors.append)
    db.start()
    for ts in (1000, 2000):
        db.insert("cb", columns([(ts, "a", 1.0)]))
        db.writer("cb").flush()
        assert wait_until(lambda: len(errors) >= len(calls) > 0)
    assert wait_until(lambda: sum(calls) == 2)
    assert set(errors) == {"ValueError: boom"} and callback.is_active
    assert repr(callback) == "CallbackSubscription(stream, active)"
    callback.cancel()
    callback.wait()
    assert not callback.is_active


# -- streams that would need cross-worker merging --------------------------------------------


UNSAFE = {  # (windowed and plain COUNT/SUM/... aggregates are merged now: test_merged_streams.py,
    # test_cumulative_streams.py)
    "g_value": "CREATE STREAM g_value AS SELECT value, COUNT(*) AS n FROM us GROUP BY value "
    "HAVING SUM(value) > 1",
    "g_rr": "CREATE STREAM g_rr AS SELECT device, STDDEV(value) AS sd FROM us_rr GROUP BY device",
}


async def test_streams_needing_a_cross_worker_merge_raise_stream_error(
    db: Any, scratch: Scratch
) -> None:
    scratch.source("us")
    scratch.source("us_rr", keyed=False)
    for name, sql in UNSAFE.items():
        scratch.stream(sql)
        calls: list[Callable[[], Any]] = [
            functools.partial(db.subscribe_stream, name),
            functools.partial(db.subscribe_stream_callback, name, print),
            functools.partial(lambda n: laminardb.mv(db, n).subscribe(), name),
        ]
        for call in calls:
            with pytest.raises(laminardb.StreamError, match=f"stream '{name}'.*workers"):
                call()
        with pytest.raises(laminardb.StreamError, match=name):
            await db.subscribe_stream_async(name)


def test_union_rule_reads_the_sql() -> None:
    catalog = Catalog()
    schema = SCHEMA
    catalog.add(Relation("ev", "source", schema, "", partition_by=("device",)))
    catalog.add(Relation("rr", "source", schema, ""))
    catalog.add(Relation("tb", "table", schema, "", home=0))
    safe = [
        "SELECT ts, device FROM ev WHERE value > 1",
        "SELECT * FROM rr",
        "SELECT device, count(*) FROM ev GROUP BY device, tumble(ts, INTERVAL '1' SECOND)",
        "SELECT e.device AS d, sum(value) FROM ev AS e GROUP BY 1",
        "SELECT device AS d, max(value) FROM ev GROUP BY d",
        "SELECT DISTINCT device, value FROM ev",
        "SELECT count(*) FROM tb",
    ]
    unsafe = [
        "SELECT count(*) FROM ev",
        "SELECT value, count(*) FROM ev GROUP BY value",
        "SELECT lower(device), count(*) FROM ev GROUP BY lower(device)",
        "SELECT device, count(*) FROM rr GROUP BY device",
        "SELECT ts FROM ev LIMIT 3",
        "SELECT device, row_number() OVER (PARTITION BY device) FROM ev",
        "SELECT a.ts FROM ev a JOIN rr b ON a.device = b.device",
        "SELECT ts FROM some_stream",
        "SELECT DISTINCT value FROM ev",
        "SELECT median(value) FROM ev",
    ]
    for sql in safe:
        assert why_not_union(sql, catalog) is None, sql
    for sql in unsafe:
        assert why_not_union(sql, catalog), sql


def test_stream_results_survive_a_second_idle_source() -> None:
    with laminardb.open(":memory:", workers=1) as conn:
        keyed_source(conn, "busy")
        keyed_source(conn, "idle")
        conn.execute("CREATE STREAM busy_rows AS SELECT ts FROM busy")
        sub = conn.subscribe_stream("busy_rows")
        conn.start()
        for ts in (1000, 2000):
            conn.insert("busy", columns([(ts, "a", 1.0)]))
            assert read(sub, 1, timeout_s=2.0) == [(ts,)]
