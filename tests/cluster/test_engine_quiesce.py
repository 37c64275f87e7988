"""The worker waits for the pipeline to take its pending batches (`streams.quiesce`) before a
watermark or a restart's replay, but only for sources the pipeline consumes: the native
engine never takes a batch of a source made after `start()`, so waiting for one ran every
`Writer.watermark` call into the 10 s limit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from test_lifecycle import wait_until

from workers import streams
from workers.engine import Engine

pytestmark = pytest.mark.timeout(60)

EV = "CREATE SOURCE ev (ts BIGINT, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
LATE = "CREATE SOURCE w (ts BIGINT, v DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
ROWS = pa.table({"ts": pa.array([10, 20], pa.int64()), "v": [1.0, 2.0]})


@pytest.fixture
def started() -> Iterator[Engine]:
    """An engine whose pipeline runs over `ev`, with `w` made after the start."""
    e = Engine()
    e.execute(EV, "CREATE_SOURCE", "ev")
    e.execute("CREATE STREAM s AS SELECT * FROM ev WHERE v > 1", "CREATE_STREAM", "s")
    e.start()
    e.execute(LATE, "CREATE_SOURCE", "w")
    yield e
    e.close()


def _pending(e: Engine, source: str) -> int:
    return int(e.conn.source_metrics(source).pending)


def test_a_source_made_after_start_is_never_consumed(started: Engine) -> None:
    assert started.consumed == {"ev"}
    started.insert("w", ROWS)
    started.insert("ev", ROWS)
    assert wait_until(lambda: _pending(started, "ev") == 0)  # a cycle ran...
    assert _pending(started, "w") == 1  # ...and left w's batch where it was


def test_watermark_waits_only_for_consumed_sources(
    started: Engine, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setattr(streams, "QUIESCE_LIMIT_S", 2.0)
    started.insert("w", ROWS)
    started.insert("ev", ROWS)
    with caplog.at_level(logging.WARNING, logger="laminardb.worker.streams"):
        assert started.watermark("w", 5000) == 5000
        assert _pending(started, "ev") == 0  # ev's batch was taken before the watermark moved
        assert started.watermark("ev", 5000) == 5000
    assert "did not take" not in caplog.text
    assert started.conn.sql("SELECT count(*) FROM w").fetchall() == [(2,)]


def test_consumed_follows_the_catalog(started: Engine) -> None:
    started.execute("DROP SOURCE w", "DROP", "w")
    started.execute(LATE, "CREATE_SOURCE", "w")
    assert started.consumed == {"ev"}
    started.execute("CREATE STREAM s2 AS SELECT * FROM w", "CREATE_STREAM", "s2")  # a rebuild
    assert started.rebuilds == 1
    assert started.consumed == {"ev", "w"}
    started.insert("w", ROWS)
    assert wait_until(lambda: _pending(started, "w") == 0)  # the rebuilt engine consumes it


def test_a_watermark_behind_every_pending_row_does_not_wait(
    started: Engine, monkeypatch: Any
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(streams, "quiesce", lambda conn, since, consumed: waits.append(since))
    started.insert("ev", ROWS)  # ts 10 and 20
    assert started.unsettled == {"ev": 10}
    started.watermark("ev", 10)  # drops no row of the pending batch: no wait
    assert waits == [] and started.unsettled == {"ev": 10}
    started.watermark("ev", 11)  # would drop ts 10 if the batch were still pending
    assert len(waits) == 1 and started.unsettled == {}
    started.insert("w", ROWS)  # not consumed: its rows never wait for a cycle
    started.watermark("ev", 1_000)
    assert len(waits) == 1


def test_a_pending_row_of_unknown_time_always_waits(monkeypatch: Any) -> None:
    e = Engine()
    try:
        e.execute("CREATE SOURCE plain (ts BIGINT, v DOUBLE)", "CREATE_SOURCE", "plain")
        e.execute("CREATE STREAM s AS SELECT * FROM plain", "CREATE_STREAM", "s")
        e.start()
        waits: list[float] = []
        monkeypatch.setattr(streams, "quiesce", lambda conn, since, consumed: waits.append(since))
        e.insert("plain", ROWS)  # no WATERMARK column: the engine's lateness is not ours to guess
        assert e.unsettled == {"plain": None}
        e.watermark("plain", 0)
        assert len(waits) == 1
    finally:
        e.close()


@pytest.mark.parametrize(
    ("values", "typ", "expected"),
    [
        ([5, -3, 7], pa.int64(), -3),
        ([5, None], pa.int64(), None),
        ([2_500, 1_999], pa.timestamp("ms"), 1_999),
        ([2_500_999, 1_999_999], pa.timestamp("us"), 1_999),
        ([-1_500], pa.timestamp("us"), -1),  # truncated, as the coordinator's clock does
        ([3], pa.timestamp("s"), 3_000),
        ([1.5], pa.float64(), None),
    ],
)
def test_lowest_event_ms(values: list[Any], typ: pa.DataType, expected: int | None) -> None:
    table = pa.table({"ts": pa.array(values, typ)})
    assert streams.lowest_event_ms(table, "ts") == expected
    assert streams.lowest_event_ms(table, None) is None


class _Timeline:
    """A fake engine whose pending count and cycle count follow a script, one step per poll
    (each `time.sleep` of `quiesce` moves it on, in fake time)."""

    def __init__(self, steps: list[tuple[int, int]]) -> None:
        self.steps = steps  # (pending, total_cycles) from poll 0 on; the last one stays
        self.polls = 0
        self.now = 100.0

    def state(self) -> tuple[int, int]:
        return self.steps[min(self.polls, len(self.steps) - 1)]

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.polls += 1
        self.now += seconds

    def metrics(self) -> Any:
        return type("M", (), {"total_cycles": self.state()[1]})()

    def all_source_metrics(self) -> list[Any]:
        return [type("S", (), {"name": "ev", "pending": self.state()[0]})()]


@pytest.mark.parametrize(
    ("steps", "polls"),
    [
        # taken, and no cycle ended by then: the next end is the taking cycle's
        ([(1, 5), (1, 5), (0, 5), (0, 5), (0, 6)], 4),
        # a cycle ended between the polls: it may have been an earlier one, so one more
        ([(1, 5), (0, 6), (0, 6), (0, 7)], 3),
        # two ended: the taking cycle was the second
        ([(1, 5), (0, 7)], 1),
    ],
)
def test_quiesce_waits_for_the_cycle_that_took_the_batch(
    steps: list[tuple[int, int]], polls: int, monkeypatch: Any
) -> None:
    fake = _Timeline(steps)
    monkeypatch.setattr(streams, "time", fake)  # the module's clock, not the process's
    streams.quiesce(fake, since=fake.now, consumed={"ev"})
    assert fake.polls == polls
