"""HAVING in merged window streams: evaluated by the coordinator after the merge, against native.

The engine closes a tumbling window stream with HAVING correctly when HAVING names aggregates
that its SELECT list does not (and group columns); the emitted rows then carry no
window_start/window_end columns. The same calls go to native and to a cluster of 1-3 workers;
the multiset of rows must be identical (HAVING over a group's total, never a worker's part).
A HAVING that repeats a selected aggregate makes the engine emit nothing at all: the cluster
refuses such a stream with that reason instead.
"""

from __future__ import annotations

import pytest
from test_merged_streams import SOURCE, assert_same_rows, finish, run_pair, ticks

import laminardb

pytestmark = pytest.mark.timeout(120)

W = "tumble(ts, INTERVAL '3' SECOND)"
STREAMS = {
    "hd": f"CREATE STREAM hd AS SELECT device, {W} AS w, COUNT(*) AS n FROM ev "
    f"GROUP BY device, {W} HAVING SUM(value) >= 6 AND device <> 'd3' EMIT ON WINDOW CLOSE",
    "hg": f"CREATE STREAM hg AS SELECT {W} AS w, COUNT(*) AS n, SUM(value) AS total FROM ev "
    f"WHERE value > 1 GROUP BY {W} HAVING MAX(value) BETWEEN 2 AND 5 OR COUNT(value) >= 12 "
    "EMIT FINAL",
    "hn": f"CREATE STREAM hn AS SELECT device, {W} AS w, MIN(ts) AS lo FROM ev GROUP BY device, "
    f"{W} HAVING MAX(value) IS NOT NULL AND (MIN(value) IS NULL OR MIN(value) > 1) "
    "EMIT ON WINDOW CLOSE",  # sqlglot reads IS NOT NULL as one node, `Is(negate=True)`
}


@pytest.mark.parametrize(
    ("workers", "keyed", "mode"),
    [
        (2, False, "late"),
        (3, True, "shuffled"),
        (2, True, "idle"),
        pytest.param(1, False, "shuffled", marks=pytest.mark.slow),
        pytest.param(3, False, "ordered", marks=pytest.mark.slow),
    ],
)
def test_having_after_merge_matches_native(workers: int, keyed: bool, mode: str) -> None:
    data = finish(
        ticks(seed=workers * 13 + keyed * 3 + len(mode), mode=mode), workers, mode == "idle"
    )
    theirs, ours, native_subs, subs = run_pair(workers, keyed, data, STREAMS, merged=True)
    try:
        assert_same_rows(native_subs, subs)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("having", "reason"),
    [
        ("COUNT(*) > 1", "repeats"),
        ("n > 1", "names the output n"),
        ("SUM(value) / 2 > 1", "not evaluated"),
        ("value > 1", "not grouped"),
    ],
)
def test_having_not_merged_says_why(having: str, reason: str) -> None:
    conn = laminardb.open(":memory:", workers=2)
    try:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(
            f"CREATE STREAM x AS SELECT device, {W} AS w, COUNT(*) AS n FROM ev "
            f"GROUP BY device, {W} HAVING {having} EMIT ON WINDOW CLOSE"
        )
        assert reason in conn._streams.merges.reasons["x"]
        with pytest.raises(laminardb.StreamError, match=reason):
            conn.subscribe_stream("x")
    finally:
        conn.close()
