"""DISTINCT aggregates in merged window streams, against one native instance.

`COUNT(DISTINCT x)`, `SUM(DISTINCT x)`, `AVG(DISTINCT x)` (all DISTINCT aggregates of a
stream over one argument) are merged from the distinct values: each worker's partial stream
also groups by `x`, and the coordinator counts (sums, ...) the values that passed the WHERE
once per group. The same calls go to native and to a cluster of 1-3 workers; the multiset
of rows must be identical.
"""

from __future__ import annotations

import laminardb_native as native
import pytest
from test_merged_streams import (
    SOURCE,
    arrow,
    assert_quiet,
    canon,
    finish,
    read_native,
    read_until,
    ticks,
)

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
    theirs = native.open(":memory:")
    ours = laminardb.open(":memory:", workers=workers)
    try:
        for conn, key in ((theirs, ""), (ours, " PARTITION BY (device)" if keyed else "")):
            conn.execute(SOURCE.format(partition=key))
            for sql in STREAMS.values():
                conn.execute(sql)
        if workers > 1:
            assert set(ours._streams.merges.runs) == set(STREAMS), ours._streams.merges.reasons
        native_subs = {name: theirs.subscribe_stream(name) for name in STREAMS}
        subs = {name: ours.subscribe_stream(name) for name in STREAMS}
        theirs.start()
        ours.start()
        for rows in data:
            theirs.insert("ev", arrow(rows))
            ours.insert("ev", arrow(rows))
        for name in STREAMS:
            want = canon(read_native(native_subs[name]))
            assert want, f"native {name} emitted nothing: the data must close windows"
            got = read_until(subs[name], want)
            assert got == want, f"{name}: only ours {got - want}, only native {want - got}"
            assert_quiet(subs[name])
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
