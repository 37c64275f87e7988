"""The delay of every form of WATERMARK clause, as the coordinator reads it (`clock`), against
the delay one native instance applies (its watermark after one row): the cluster judges
late rows by it, so a form read otherwise keeps rows native drops, or drops rows it keeps."""

from __future__ import annotations

import time
from typing import Any

import laminardb_native as native
import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Relation
from laminardb.streams.clock import watermark_of

pytestmark = pytest.mark.timeout(120)

FORMS = [
    "",
    "AS ts",
    "AS ts + INTERVAL '1' SECOND",
    "AS ts * 2",
    "AS ts - INTERVAL '2' SECOND",
    "AS ts - INTERVAL '2' SECONDS",
    "AS ts - INTERVAL '2' minute",
    "AS ts - INTERVAL '2' MINUTES",
    "AS ts - INTERVAL '2' HOUR",
    "AS ts - INTERVAL '2' HOURS",
    "AS ts - INTERVAL '1' DAY",
    "AS ts - INTERVAL '1' DAYS",
    "AS ts - INTERVAL '500' MILLISECOND",
    "AS ts - INTERVAL '500' MILLISECONDS",
    "AS ts - INTERVAL '2999' MICROSECOND",
    "AS ts - INTERVAL '3' NANOSECOND",
    "AS ts - INTERVAL '1' WEEK",
    "AS ts - INTERVAL '2'",
    "AS ts - INTERVAL 2 SECOND",
    "AS ts - INTERVAL '+2' SECOND",
    "AS ts - INTERVAL '0' SECOND",
    "AS ts - INTERVAL '1:30' MINUTE TO SECOND",
    "AS ts - INTERVAL '2 seconds'",
    "AS ts - INTERVAL '1.5' SECOND",
    "AS ts - INTERVAL '-2' SECOND",
    "AS ts - INTERVAL '2' SECOND * 2",
    "AS ts - INTERVAL '2' SECOND + INTERVAL '1' SECOND",
    "AS ts - 5000",
    "AS (ts - INTERVAL '3' SECOND)",
    "AS abs(ts)",
    "AS -ts",
]
T = 1_000_000_000


def native_delay(form: str) -> Any:
    conn = native.open(":memory:")
    try:
        conn.execute(f"CREATE SOURCE ev (ts BIGINT, v BIGINT, WATERMARK FOR ts {form})")
        conn.execute("CREATE STREAM s AS SELECT ts FROM ev")
        conn.subscribe_stream("s")
        conn.start()
        conn.insert("ev", pa.table({"ts": [T], "v": [1]}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            mark = conn.pipeline_watermark
            if mark is not None and mark > -(2**62):
                return T - mark
            time.sleep(0.02)
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("form", FORMS)
def test_the_delay_is_the_engines(form: str) -> None:
    sql = f"CREATE SOURCE ev (ts BIGINT, v BIGINT, WATERMARK FOR ts {form})"
    relation = Relation("ev", "source", pa.schema([("ts", pa.int64()), ("v", pa.int64())]), sql)
    assert watermark_of(relation) == ("ts", native_delay(form))
