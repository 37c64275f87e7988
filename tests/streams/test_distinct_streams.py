"""DISTINCT aggregates in merged window streams, against one native instance.

`COUNT(DISTINCT x)`, `SUM(DISTINCT x)`, `AVG(DISTINCT x)` (all DISTINCT aggregates of a
stream over one argument) are merged from the distinct values: each worker's partial stream
also groups by `x`, and the coordinator counts (sums, ...) the values that passed the WHERE
once per group. The same calls go to native and to a cluster of 1-3 workers; the multiset
of rows must be identical.
"""

from __future__ import annotations

import pytest
from test_merged_streams import SOURCE, assert_same_rows, finish, run_pair, ticks

import laminardb

pytestmark = pytest.mark.timeout(120)

W = "tumble(ts, INTERVAL '3' SECOND)"
STREAMS = {
    "dg": f"CREATE STREAM dg AS SELECT {W} AS w, COUNT(DISTINCT device) AS d, COUNT(*) AS n, "
    f"SUM(value) AS s FROM ev GROUP BY {W} EMIT ON WINDOW CLOSE",
    "dv": f"CREATE STREAM dv AS SELECT device, {W} AS w, SUM(DISTINCT value) AS sd, "
    f"AVG(DISTINCT value) AS ad, COUNT(*) AS n FROM ev WHERE value > 2 "
    f"GROUP BY device, {W} EMIT FINAL",
}


@pytest.mark.parametrize(
    ("workers", "keyed", "mode"),
    [
        (2, False, "late"),
        (3, True, "idle"),
        pytest.param(1, False, "shuffled", marks=pytest.mark.slow),
        pytest.param(3, False, "ordered", marks=pytest.mark.slow),
    ],
)
def test_distinct_aggregates_match_native(workers: int, keyed: bool, mode: str) -> None:
    data = finish(
        ticks(seed=workers * 7 + keyed * 11 + len(mode), mode=mode), workers, mode == "idle"
    )
    theirs, ours, native_subs, subs = run_pair(workers, keyed, data, STREAMS, merged=True)
    try:
        assert_same_rows(native_subs, subs)
    finally:
        ours.close()
        theirs.close()


def test_distinct_over_two_arguments_says_why() -> None:
    conn = laminardb.open(":memory:", workers=2)
    try:
        conn.execute(SOURCE.format(partition=""))
        conn.execute(
            f"CREATE STREAM x AS SELECT {W} AS w, COUNT(DISTINCT device) AS d, "
            f"SUM(DISTINCT value) AS s FROM ev GROUP BY {W} EMIT ON WINDOW CLOSE"
        )
        with pytest.raises(laminardb.StreamError, match="not all over one argument"):
            conn.subscribe_stream("x")
    finally:
        conn.close()
