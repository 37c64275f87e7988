"""Windowed aggregates merged across workers, and the cluster watermark, against one native instance.

The same DDL and the same insert calls go to one `laminardb_native` instance and to a
cluster of 1-3 workers (keyed by device, or round-robin); the stream groups by something
other than the partition key (or by nothing), so every window's rows are spread over the
workers and the coordinator merges their partial aggregates. The multiset of rows per
window that subscribers receive must be identical: in order, out of order within the
watermark delay, with late rows (dropped by both sides alike), and with idle workers (the
last calls reach only one worker, which must not keep the others' windows open).

Waits poll with deadlines, never sleep for a fixed time.
"""

from __future__ import annotations

import asyncio
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
from laminardb.ingest import partition
from workers.streams import quiesce

pytestmark = pytest.mark.timeout(120)

SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
DEVICES = [f"d{i}" for i in range(12)]
SOURCE = (
    "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND){partition}"
)
GLOBAL = (
    "CREATE STREAM g AS SELECT tumble(ts, INTERVAL '5' SECOND) AS ws, COUNT(*) AS n, "
    "SUM(value) AS total, AVG(value) AS av, MIN(value) AS lo, MAX(ts) AS last_ts FROM ev "
    "GROUP BY tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE"
)
# Both project their window: next to a stream whose window is not projected, the native
# engine at random emits nothing at all from any stream of the instance (about half of the
# instances; checked with 8 fresh instances), so such a stream cannot be an oracle here.
BY_VALUE = (
    "CREATE STREAM bv AS SELECT value, tumble(ts, INTERVAL '3' SECOND) AS w3, COUNT(*) AS n, "
    "MAX(device) AS top FROM ev "
    "WHERE value > 2 GROUP BY value, tumble(ts, INTERVAL '3' SECOND) EMIT FINAL"
)
STREAMS = {"g": GLOBAL, "bv": BY_VALUE}
Row = tuple[Any, ...]


def ticks(seed: int, mode: str, n: int = 14) -> list[list[Row]]:
    """Rows per insert call: (ts, device, value); whole-number values (exact float sums).

    `mode`: "ordered" (ts only grows), "shuffled" (out of order within the 2 s delay),
    "late" (some rows more than the delay behind, dropped as natively), "idle" (like
    shuffled, then calls that reach only the devices of one worker).
    """
    rng = random.Random(seed)
    out: list[list[Row]] = []
    now = 0
    for i in range(1, n + 1):
        rows: list[Row] = []
        for _ in range(rng.randint(2, 7)):
            now += rng.randint(10, 200) if mode == "ordered" else 0
            lag = {"ordered": 0, "shuffled": 1500, "idle": 1500, "late": 4500}[mode]
            ts = (now if mode == "ordered" else 1000 * i) - rng.randint(0, lag)
            rows.append((ts, rng.choice(DEVICES), float(rng.randint(1, 6))))
        out.append(rows)
    return out


def finish(data: list[list[Row]], workers: int, idle: bool) -> list[list[Row]]:
    """A last call far ahead, to close every window; with `idle`, only one worker's devices."""
    last = max(ts for rows in data for ts, _, _ in rows) + 20_000
    devices = DEVICES
    if idle and workers > 1:
        parts = partition.split(pa.table({"device": DEVICES}), ["device"], workers)
        devices = parts[0].column("device").to_pylist()
    return [*data, [(last, d, 1.0) for d in devices[:2]]]


def arrow(rows: list[Row]) -> pa.Table:
    return pa.table(
        {"ts": [r[0] for r in rows], "device": [r[1] for r in rows], "value": [r[2] for r in rows]},
        schema=SCHEMA,
    )


def restart_worker(db: Any, shard: int) -> None:
    """Kill worker `shard` with SIGKILL and return once the monitor has restarted it."""
    db.sql("SELECT 1")
    victim = db.workers()[shard].pid
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while db.workers()[shard].pid == victim and time.monotonic() < deadline:
        time.sleep(0.05)  # the monitor thread restarts it; nothing to wait on
    db.sql("SELECT 1")


def canon(rows: list[Row]) -> Counter[Row]:
    return Counter(tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows)


def native_batches(sub: Any, quiet_ms: int) -> Iterator[list[Row]]:
    """The rows of each batch a native subscription delivers until it stays quiet for
    `quiet_ms` (or fails)."""
    while True:
        try:
            batch = sub.next_timeout(quiet_ms)
        except native.SubscriptionError:
            return
        if batch is None:
            return
        yield batch.fetchall()


QUIESCED_MS = 300
"""How long native must stay quiet after `quiesce` for its output to be all read (its
results are produced by then; this only covers their way to the subscription)."""


def read_native(sub: Any, quiet_ms: int = 1500) -> list[Row]:
    """Everything a native subscription delivers until it stays quiet for `quiet_ms`."""
    return [row for rows in native_batches(sub, quiet_ms) for row in rows]


def read_until(sub: Any, want: Counter[Row], timeout_s: float = 30.0) -> Counter[Row]:
    got: list[Row] = []
    deadline = time.monotonic() + timeout_s
    while sum(canon(got).values()) < sum(want.values()) and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(100)
        except laminardb.SubscriptionError as exc:
            assert exc.code == 502
            continue
        assert batch is not None
        got.extend(batch.fetchall())
    return canon(got)


def assert_quiet(sub: Any, ms: int = 300) -> None:
    with pytest.raises(laminardb.SubscriptionError) as info:
        extra = sub.next_timeout(ms)
        pytest.fail(f"unexpected extra batch {extra.fetchall() if extra else extra}")
    assert info.value.code == 502


def run_pair(
    workers: int,
    keyed: bool,
    data: list[list[Row]],
    streams: dict[str, str] = STREAMS,
    *,
    merged: bool = False,
    stall_s: float | None = None,
    source: str = SOURCE,
    feed: Callable[[Any, int, list[Row]], None] | None = None,
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """Native and a cluster of `workers`, each with `streams` over `ev` (made by `source`)
    and subscribed, fed `data` call by call. `merged`: every stream must be merged across
    workers (when there are several); `stall_s`: the mergers' safety net (1e9: windows
    close by the clock only); `feed(ours, i, rows)`: how call `i` reaches the cluster
    (natively always one insert)."""
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=workers)
    for conn, key in ((theirs, ""), (ours, " PARTITION BY (device)" if keyed else "")):
        conn.execute(source.format(partition=key))
        for sql in streams.values():
            conn.execute(sql)
    if merged and workers > 1:
        assert set(ours._streams.merges.runs) == set(streams), ours._streams.merges.reasons
        if stall_s is not None:
            for run in ours._streams.merges.runs.values():
                run.merger.stall_s = stall_s
    native_subs = {name: theirs.subscribe_stream(name) for name in streams}
    subs = {name: ours.subscribe_stream(name) for name in streams}
    theirs.start()
    ours.start()
    for i, rows in enumerate(data):
        theirs.insert("ev", arrow(rows))
        if feed is None:
            ours.insert("ev", arrow(rows))
        else:
            feed(ours, i, rows)
    # Native has then produced every result: reading it needs no long quiet wait.
    quiesce(theirs, time.monotonic())
    return theirs, ours, native_subs, subs


def assert_same_rows(native_subs: dict[str, Any], subs: dict[str, Any]) -> None:
    """Each stream's subscriber gets the multiset of rows native emitted, and then nothing."""
    for name, sub in subs.items():
        want = canon(read_native(native_subs[name], QUIESCED_MS))
        assert want, f"native {name} emitted nothing: the data must close windows"
        got = read_until(sub, want)
        assert got == want, f"{name}: only ours {got - want}, only native {want - got}"
        assert_quiet(sub)


@pytest.mark.parametrize(
    ("workers", "keyed", "mode"),
    [
        (1, False, "shuffled"),
        (2, False, "ordered"),
        (2, True, "shuffled"),
        (2, False, "late"),
        (3, True, "late"),
        (2, True, "idle"),
        (3, True, "idle"),
        (3, False, "shuffled"),
    ],
)
def test_merged_windows_match_native(workers: int, keyed: bool, mode: str) -> None:
    data = finish(
        ticks(seed=workers * 31 + keyed * 7 + len(mode), mode=mode), workers, mode == "idle"
    )
    theirs, ours, native_subs, subs = run_pair(workers, keyed, data)
    try:
        assert_same_rows(native_subs, subs)
        if mode == "late":  # the ad-hoc table keeps late rows, as natively
            count = "SELECT count(*) FROM ev"
            assert ours.sql(count).fetchall() == theirs.sql(count).fetchall()
    finally:
        ours.close()
        theirs.close()


WRITTEN = (  # `^` is XOR to the engine, POWER to sqlglot; `$$!$$` is the text '!'
    "CREATE STREAM wr AS SELECT tumble(ts, INTERVAL '5' SECOND) AS ws, ts % 3 AS r, "
    "COUNT(*) AS n, MAX(device || $$!$$) AS dev FROM ev WHERE (ts ^ 3) % 4 <> 1 "
    "GROUP BY tumble(ts, INTERVAL '5' SECOND), ts % 3 EMIT ON WINDOW CLOSE"
)  # (the engine's own streams emit nothing with `^` inside an aggregate or a group key)


def test_workers_run_the_expressions_as_written() -> None:
    """The partial stream copies the user's text: sqlglot's reprint would compute POWER."""
    data = finish(ticks(seed=5, mode="shuffled"), 2, False)
    theirs, ours, native_subs, subs = run_pair(2, False, data, {"wr": WRITTEN}, merged=True)
    try:
        assert "(ts ^ 3) % 4 <> 1" in ours._streams.merges.runs["wr"].plan.partial_sql
        assert_same_rows(native_subs, subs)
    finally:
        ours.close()
        theirs.close()


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    yield theirs, ours
    ours.close()
    theirs.close()


def test_many_subscribers_async_and_callbacks(pair: tuple[Any, Any]) -> None:
    theirs, ours = pair
    data = finish(ticks(seed=5, mode="shuffled"), 2, idle=False)
    for conn in pair:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(GLOBAL)
    native_sub = theirs.subscribe_stream("g")
    subs = [ours.subscribe_stream("g") for _ in range(3)]
    from_callback: list[Row] = []
    lock = threading.Lock()

    def on_data(batch: Any) -> None:
        with lock:
            from_callback.extend(batch.fetchall())

    callback = ours.subscribe_stream_callback("g", on_data)

    async def read_async(want: int) -> list[Row]:
        sub = await ours.subscribe_stream_async("g")
        rows: list[Row] = []
        async for batch in sub:
            rows.extend(batch.fetchall())
            if len(rows) >= want:
                sub.cancel()
        return rows

    for conn in pair:
        conn.start()
    loop_result: list[list[Row]] = []
    started = threading.Event()

    def async_reader() -> None:
        async def main() -> None:
            task = asyncio.ensure_future(read_async(len(expected_rows)))
            started.set()
            loop_result.append(await asyncio.wait_for(task, 60))

        asyncio.run(main())

    # the native rows first (the async reader needs the count), then the cluster's
    for rows in data:
        theirs.insert("ev", arrow(rows))
    expected_rows = read_native(native_sub)
    want = canon(expected_rows)
    reader = threading.Thread(target=async_reader)
    reader.start()
    assert started.wait(10)
    deadline = time.monotonic() + 10
    while not ours._streams._feeds.get("g") or len(ours._streams._feeds["g"]) < 5:
        assert time.monotonic() < deadline, "async subscriber never attached"
        time.sleep(0.01)
    for rows in data:
        ours.insert("ev", arrow(rows))
    for sub in subs:
        assert read_until(sub, want) == want
    reader.join(60)
    assert canon(loop_result[0]) == want
    deadline = time.monotonic() + 30
    while sum(canon(from_callback).values()) < sum(want.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        assert canon(from_callback) == want
    callback.cancel()


def test_drop_stream_ends_subscribers_and_cancel_from_another_thread(pair: tuple[Any, Any]) -> None:
    _, ours = pair
    ours.execute(SOURCE.format(partition=""))
    ours.execute(GLOBAL)
    ours.start()
    waiting = ours.subscribe_stream("g")
    cancelled = ours.subscribe_stream("g")
    results: dict[str, Any] = {}

    def wait_next(name: str, sub: Any) -> None:
        results[name] = sub.next()

    threads = [
        threading.Thread(target=wait_next, args=("dropped", waiting)),
        threading.Thread(target=wait_next, args=("cancelled", cancelled)),
    ]
    for t in threads:
        t.start()
    cancelled.cancel()  # from this thread while the other waits in next()
    threads[1].join(10)
    assert not threads[1].is_alive() and results["cancelled"] is None
    ours.execute("DROP STREAM g")  # native leaves its subscriber blocked for ever; we end it
    threads[0].join(10)
    assert not threads[0].is_alive() and results["dropped"] is None
    assert [s.name for s in ours.streams()] == []
    assert all(not n.name.startswith("__ldb") for n in ours.topology().nodes)


def test_drop_source_cascade_ends_the_subscribers_of_its_streams(pair: tuple[Any, Any]) -> None:
    """Merged and forwarded streams alike; the names can be made again at once, as natively."""
    theirs, ours = pair
    plain = "CREATE STREAM p AS SELECT ts, device FROM ev WHERE value > 1"
    for conn in (theirs, ours):
        conn.execute(SOURCE.format(partition=""))
        conn.execute(GLOBAL)
        conn.execute(plain)
    ours.start()
    subs = {name: ours.subscribe_stream(name) for name in ("g", "p")}
    results: dict[str, Any] = {}
    threads = {
        name: threading.Thread(target=lambda n=name: results.setdefault(n, subs[n].next()))
        for name in subs
    }
    for thread in threads.values():
        thread.start()
    for conn in (theirs, ours):
        conn.execute("DROP SOURCE ev CASCADE")
    for name, thread in threads.items():
        thread.join(10)
        assert not thread.is_alive() and results[name] is None, name
    assert [s.name for s in ours.streams()] == [s.name for s in theirs.streams()] == []
    ours.execute(SOURCE.format(partition=""))
    ours.execute(GLOBAL)
    assert ours.subscribe_stream("g").is_active


def test_close_from_another_thread_wakes_next(pair: tuple[Any, Any]) -> None:
    _, ours = pair
    ours.execute(SOURCE.format(partition=""))
    ours.execute(GLOBAL)
    ours.start()
    sub = ours.subscribe_stream("g")
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(sub.next()))
    t.start()
    ours.close()
    t.join(10)
    assert not t.is_alive() and got == [None]


def test_catalog_shows_the_stream_as_written(pair: tuple[Any, Any]) -> None:
    """The workers run a merged stream in its partial form; the API shows it as written."""
    theirs, ours = pair
    for conn in pair:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(GLOBAL)
    assert [(s.name, s.sql) for s in ours.streams()] == [(s.name, s.sql) for s in theirs.streams()]
    assert ours.schema("g") == theirs.schema("g")
    nodes = {n.name: n.sql for n in ours.topology().nodes}
    assert nodes["g"] == theirs.streams()[0].sql
    rows = [(1000, "a", 1.0), (2500, "b", 2.0), (7000, "c", 4.0)]
    for conn in pair:
        conn.insert("ev", arrow(rows))
    assert canon(ours.query_stream("g").fetchall()) == canon(theirs.query_stream("g").fetchall())
