"""A merged stream across a worker restart: the subscribers of the moment are told, windows
open at the restart are given up, and a new subscriber gets later windows exactly as one
native instance emits them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import laminardb_native as native
import pytest
from test_merged_streams import GLOBAL, SOURCE, restart_worker, ticks

import laminardb

pytestmark = pytest.mark.timeout(180)

KILL_AT = 40
DEADLINE_S = 30.0
EPOCH = datetime(1970, 1, 1)


def _rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"ts": ts, "device": device, "value": value} for ts, device, value in rows]


def _data() -> list[list[tuple[Any, ...]]]:
    data = ticks(3, "ordered", 120)
    last = max(ts for rows in data for ts, _, _ in rows) + 20_000
    data.append([(last, "d1", 1.0), (last, "d2", 1.0), (last, "d3", 1.0)])
    return data


def _drain(sub: Any, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Rows until `until(rows)` holds or `DEADLINE_S` passed (timeouts are not errors)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while not until(out) and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(200)
        except (laminardb.SubscriptionError, native.SubscriptionError) as exc:
            if "timeout" not in str(exc).lower():
                raise
            continue
        if batch is not None:
            out += (
                batch.to_pylist() if hasattr(batch, "to_pylist") else batch.to_arrow().to_pylist()
            )
    return out


def _has(ws: set[datetime]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: ws <= {row["ws"] for row in rows}


def test_merged_stream_survives_a_worker_restart(tmp_path: Any) -> None:
    data = _data()
    # The last call's row, 20 s past the others, closes the window of every other row.
    last = data[-1][0][0]
    closed = {
        EPOCH + timedelta(milliseconds=ts - ts % 5000)
        for rows in data
        for ts, _, _ in rows
        if ts < last
    }
    single = native.open(":memory:")
    single.execute(SOURCE.format(partition=""))
    single.execute(GLOBAL)
    expected_sub = single.subscribe_stream("g")
    single.start()
    for rows in data:
        single.insert("ev", _rows(rows))
    expected = {r["ws"]: r for r in _drain(expected_sub, _has(closed))}
    single.close()
    assert set(expected) == closed

    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute(SOURCE.format(partition=" PARTITION BY (device)"))
        db.execute(GLOBAL)
        first = db.subscribe_stream("g")
        db.start()
        for i, rows in enumerate(data):
            if i == KILL_AT:
                restart_worker(db, 1)
                later = db.subscribe_stream("g")
            db.insert("ev", _rows(rows))
        with pytest.raises(laminardb.SubscriptionError, match="worker 1"):
            _drain(first, lambda rows: False)
        got = _drain(later, _has({max(closed)}))  # windows arrive in order
    assert got, "no window reached the subscriber that came after the restart"
    for row in got:  # every window delivered is the single instance's, row for row
        assert row == expected[row["ws"]]
    # only windows open at the restart are missing: from the first one delivered, all arrived
    first_ws = min(row["ws"] for row in got)
    assert sorted(row["ws"] for row in got) == sorted(ws for ws in expected if ws >= first_ws)
