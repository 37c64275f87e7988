"""Values at the edges of what the in-process merges compute, against one native instance:
integer medians whose two middle values sum past 64 bits, float sort keys holding both -0.0
and 0.0, and a FILTER whose condition is NULL on some rows beside a distinct count or a
median (the workers then group, and the engine's grouped FILTER counts such rows)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pairs import check, open_pair

pytestmark = pytest.mark.timeout(120)

BIG = 2**63 - 1
DDL = {
    "e": ("CREATE SOURCE e (id BIGINT, g VARCHAR, i BIGINT, n INT, t TINYINT, f DOUBLE)", ""),
    "k": ("CREATE SOURCE k (id BIGINT, g VARCHAR, i BIGINT, f DOUBLE)", " PARTITION BY (id)"),
}
_F = [-0.0, 0.0, -0.0, 0.0, 1.5, -1.5, -0.0, 0.0]
DATA = {
    "e": pa.table(
        {
            "id": pa.array(range(8), pa.int64()),
            "g": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "i": pa.array([BIG, BIG - 1, -BIG - 1, -BIG, 2**62, 2**62, None, 3], pa.int64()),
            "n": pa.array([2**30, 2**30, 2**31 - 1, 7, -(2**31), -5, 1, None], pa.int32()),
            "t": pa.array([-128, -5, 127, 126, -128, -128, 3, None], pa.int8()),
            "f": pa.array(_F),
        }
    ),
    "k": pa.table(
        {
            "id": pa.array(range(8), pa.int64()),
            "g": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "i": pa.array([None, 1, None, 2, 3, None, 4, 6], pa.int64()),
            "f": pa.array(_F),
        }
    ),
}

QUERIES = [
    "SELECT g, median(i) AS mi, median(n) AS mn, median(t) AS mt FROM e GROUP BY g",
    "SELECT median(i) FROM e WHERE g = 'a'",
    "SELECT median(n), median(t) FROM e WHERE g IN ('b', 'c')",
    "SELECT f, id FROM e ORDER BY f, id DESC LIMIT 10",
    "SELECT f, id FROM k ORDER BY f, id DESC LIMIT 3",
    "SELECT f, id FROM k ORDER BY f DESC, id LIMIT 4",
    "SELECT id, max(f) AS m FROM e GROUP BY id ORDER BY m, id DESC LIMIT 8",
    "SELECT count(DISTINCT g) AS dg, count(*) FILTER (WHERE i % 2 = 0) AS c, "
    "count(f) FILTER (WHERE i % 2 = 0) AS cf, sum(id) FILTER (WHERE i > 1) AS s FROM k",
    "SELECT median(id) AS m, count(*) FILTER (WHERE i % 2 = 0) AS c FROM k",
    "SELECT g, count(*) FILTER (WHERE i % 2 = 0) AS c FROM k GROUP BY g ORDER BY g",
]


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Any, Any]]:
    with open_pair(DDL, DATA, 2) as both:
        yield both


@pytest.mark.parametrize("sql", QUERIES)
def test_edge_values_answer_like_one_instance(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)
