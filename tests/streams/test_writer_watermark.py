"""A user's `Writer.watermark()` moves the cluster clock exactly as one native instance's.

The same calls (inserts and explicit watermarks) go to one `laminardb_native` instance and
to a cluster of 2-3 workers whose merged window streams must emit, after every call, the
rows native emitted after that call: windows close on the first call with live data once
the explicit watermark passed their end (not 5 s later through the merger's stall safety
net, which is disabled here), and rows behind an explicit watermark are dropped by both.
Native is let to finish each call's cycle before its next call (`quiesce`), since a native
watermark also drops rows still waiting for their cycle.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest
from test_merged_streams import canon, read_native

import laminardb
from workers.streams import quiesce

pytestmark = pytest.mark.timeout(120)

SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
SOURCE = (
    "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '2' SECOND){partition}"
)
STREAMS = {
    "g": "CREATE STREAM g AS SELECT tumble(ts, INTERVAL '5' SECOND) AS ws, COUNT(*) AS n, "
    "SUM(value) AS total, AVG(value) AS av FROM ev "
    "GROUP BY tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE",
    "bv": "CREATE STREAM bv AS SELECT value, tumble(ts, INTERVAL '3' SECOND) AS w3, "
    "COUNT(*) AS n, MAX(device) AS top FROM ev WHERE value > 1 "
    "GROUP BY value, tumble(ts, INTERVAL '3' SECOND) EMIT FINAL",
}
Row = tuple[Any, ...]
Step = tuple[str, Any]

DEVICES = ["a", "b", "c", "d", "e", "f"]


def rows(*ts: int) -> list[Row]:
    return [(t, DEVICES[i % len(DEVICES)], float(1 + i % 3)) for i, t in enumerate(ts)]


# (kind, payload): "ins" rows or "wm" an explicit watermark
SCRIPT: list[Step] = [
    ("ins", rows(1000, 3000, 3500, 4200)),
    ("wm", 12_000),  # far beyond the data: closes [0,5000) on the next live call
    ("ins", rows(6000, 9000)),  # behind the explicit watermark: dropped, closes nothing
    ("ins", rows(12_500, 13_000, 14_900)),  # live: [0,5000) closes now
    ("wm", 11_000),  # backwards: no effect
    ("wm", 16_000),
    ("ins", rows(15_000, 15_500)),  # late again
    ("ins", rows(16_500, 17_000, 18_100)),  # [10000,15000) closes now
    ("wm", 21_000),
    ("ins", rows(20_500, 22_000, 23_000)),  # 20500 late; [15000,20000) closes
    ("ins", rows(40_000, 41_000)),  # data moves the watermark past everything else
]


def arrow(data: list[Row]) -> pa.Table:
    return pa.table(
        {"ts": [r[0] for r in data], "device": [r[1] for r in data], "value": [r[2] for r in data]},
        schema=SCHEMA,
    )


def read_until(sub: Any, want: Counter[Row], timeout_s: float = 15.0) -> Counter[Row]:
    got: list[Row] = []
    deadline = time.monotonic() + timeout_s
    while sum(canon(got).values()) < sum(want.values()) and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(50)
        except laminardb.SubscriptionError:
            continue
        assert batch is not None
        got.extend(batch.fetchall())
    return canon(got)


def native_steps(script: list[Step]) -> tuple[dict[str, list[Counter[Row]]], tuple[int, int]]:
    """Per stream, the rows native emitted after each call; its final count(*) and
    pipeline watermark."""
    conn = native.open(":memory:")
    try:
        conn.execute(SOURCE.format(partition=""))
        for sql in STREAMS.values():
            conn.execute(sql)
        subs = {name: conn.subscribe_stream(name) for name in STREAMS}
        conn.start()
        writer = conn.writer("ev")
        out: dict[str, list[Counter[Row]]] = {name: [] for name in STREAMS}
        last = time.monotonic()
        for kind, payload in script:
            if kind == "ins":
                conn.insert("ev", arrow(payload))
                last = time.monotonic()
            else:
                quiesce(conn, last)  # native would also drop rows still waiting for a cycle
                writer.watermark(payload)
            quiesce(conn, last)
            for name, sub in subs.items():
                out[name].append(canon(read_native(sub, quiet_ms=250)))
        count = conn.sql("SELECT count(*) FROM ev").fetchall()[0][0]
        return out, (int(count), int(conn.pipeline_watermark))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def expected() -> tuple[dict[str, list[Counter[Row]]], tuple[int, int]]:
    want, count = native_steps(SCRIPT)
    assert any(sum(c.values()) for c in want["g"]), "native emitted nothing"
    return want, count


@pytest.mark.parametrize(("workers", "keyed"), [(2, False), (3, True)])
def test_writer_watermark_closes_windows_like_native(
    workers: int, keyed: bool, expected: tuple[dict[str, list[Counter[Row]]], tuple[int, int]]
) -> None:
    want, (count, pipeline_watermark) = expected
    conn = laminardb.open(":memory:", workers=workers)
    try:
        conn.execute(SOURCE.format(partition=" PARTITION BY (device)" if keyed else ""))
        for sql in STREAMS.values():
            conn.execute(sql)
        runs = conn._streams.merges.runs
        assert set(runs) == set(STREAMS), conn._streams.merges.reasons
        for run in runs.values():
            run.merger.stall_s = 1e9  # windows must close by the clock, not the safety net
        subs = {name: conn.subscribe_stream(name) for name in STREAMS}
        conn.start()
        writer = conn.writer("ev")
        for i, (kind, payload) in enumerate(SCRIPT):
            if kind == "ins":
                conn.insert("ev", arrow(payload))
            else:
                writer.watermark(payload)
            for name, sub in subs.items():
                got = read_until(sub, want[name][i])
                assert got == want[name][i], f"{name} after call {i} ({kind} {payload})"
        for name, sub in subs.items():
            with pytest.raises(laminardb.SubscriptionError):
                extra = sub.next_timeout(300)
                pytest.fail(f"{name}: unexpected {extra.fetchall() if extra else extra}")
        for run in runs.values():
            assert run.merger.stalled == 0
        assert writer.current_watermark == pipeline_watermark == 39_000
        assert conn.pipeline_watermark == pipeline_watermark
        assert conn.sql("SELECT count(*) FROM ev").fetchall() == [(count,)]
    finally:
        conn.close()


def test_watermark_and_rows_survive_a_reopen_in_the_clock(tmp_path: Any) -> None:
    """A reopened database replays its rows and watermarks into the workers; the cluster clock
    starts from them, so rows behind them are not expected by any window (no stall)."""
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=2) as conn:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(STREAMS["g"])
        conn.start()
        conn.insert("ev", arrow(rows(1000, 2000)))
        with conn.writer("ev") as writer:
            writer.watermark(12_000)
    with laminardb.open(path, workers=2) as conn:
        runs = conn._streams.merges.runs
        assert "g" in runs, conn._streams.merges.reasons
        runs["g"].merger.stall_s = 1e9
        sub = conn.subscribe_stream("g")
        conn.start()
        conn.insert("ev", arrow(rows(6000, 9000)))  # late: the replayed watermark is 12000
        conn.insert("ev", arrow(rows(12_500, 13_000)))
        conn.insert("ev", arrow(rows(20_000)))  # watermark 18000: [10000,15000) closes
        got = read_until(sub, canon([(10_000, 15_000, None, 2, 3.0, 1.5)]))
        assert [(r[0], r[1], r[3]) for r in got] == [(10_000, 15_000, 2)]
        assert runs["g"].merger.stalled == 0


@pytest.mark.parametrize("bad", ["5", None, 2.5])
def test_watermark_takes_only_integers_like_native(bad: Any) -> None:
    """Native raises TypeError (a float is not truncated); so does the cluster, and the
    watermark stays where it was."""
    ddl = "CREATE SOURCE wm (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    one = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    try:
        messages = []
        for conn in (one, ours):
            conn.execute(ddl)
            with pytest.raises(TypeError) as caught:
                conn.writer("wm").watermark(bad)
            messages.append(str(caught.value))
        assert messages[0] == messages[1]
        assert ours.writer("wm").current_watermark == one.writer("wm").current_watermark
    finally:
        ours.close()
        one.close()


def test_no_watermark_moves_before_start_as_natively() -> None:
    """Natively rows inserted before `start()` leave the writer's watermark where it was."""
    ddl = "CREATE SOURCE early (ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    one = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=2)
    try:
        marks = []
        for conn in (one, ours):
            conn.execute(ddl)
            writer = conn.writer("early")
            writer.insert([{"ts": 5000}])
            writer.flush()
            before = writer.current_watermark
            writer.watermark(2000)
            fresh = conn.writer("early")  # the source's watermark, not the writer's own
            marks.append((before, writer.current_watermark, fresh.current_watermark))
        assert marks[0] == marks[1] == (-(2**63), 2000, 2000)
    finally:
        ours.close()
        one.close()
