"""Run-time errors the native engine swallows (an integer division by zero): one native
instance then answers nothing, and so must the cluster, where only the worker holding the
failing row fails and the others still answer (a global aggregate: `Plan.one_row_each`;
anything else: the worker marks its empty answer, `workers.engine.checked`, also in a
broadcast join, and the query is gathered)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pairs import check, open_pair

from laminardb.cluster.catalog import Catalog
from laminardb.plan import split

pytestmark = pytest.mark.timeout(120)

DDL = {
    "t": ("CREATE SOURCE t (id BIGINT, g BIGINT, v DOUBLE)", " PARTITION BY (id)"),
    "d": ("CREATE SOURCE d (g BIGINT, k BIGINT)", ""),
}
DATA = {
    "t": pa.table(
        {
            "id": pa.array(range(40), pa.int64()),
            "g": pa.array([i % 4 for i in range(40)], pa.int64()),
            "v": pa.array([i * 0.5 for i in range(40)]),
        }
    ),
    "d": pa.table({"g": pa.array(range(4), pa.int64()), "k": pa.array([5, 6, 7, 8], pa.int64())}),
}

SWALLOWED = [
    "SELECT count(*) FROM t WHERE id / (g - g) > 1",  # every row fails
    "SELECT count(*), sum(v) FROM t WHERE 10 / (id - 5) > 0",  # one row, on one worker
    "SELECT sum(10 / (id - 5)) AS s, max(v) AS m FROM t",
    "SELECT avg(v) FROM t WHERE v > 2 AND CASE WHEN g = 0 THEN false ELSE id / (g - 1) > 1 END",
]
GROUPED = [  # the failing row lives on one worker; the others' groups must not come back
    "SELECT g, sum(10 / (id - 5)) AS s FROM t GROUP BY g",
    "SELECT g, count(*) AS n FROM t WHERE 10 / (id - 7) > -100 GROUP BY g ORDER BY g",
    "SELECT id, count(*) AS n FROM t WHERE 10 / (id - 7) > -100 GROUP BY id",  # keyed group
    "SELECT g, avg(v) FROM t GROUP BY g HAVING sum(10 / (id - 9)) > 0",
    "SELECT id, 10 / (id - 5) AS x FROM t",  # no aggregate: one batch, native answers nothing
    "SELECT DISTINCT g % (id - 11) AS r FROM t",
]
BROADCAST = [  # joins with the small d shipped to every worker (workers/broadcast.py)
    "SELECT t.id, d.k FROM t JOIN d ON t.g = d.g WHERE 10 / (t.id - 5) > -100",
    "SELECT t.id, 100 / (t.id - d.k) AS x FROM t JOIN d ON t.g = d.g",
    "SELECT d.k, count(*) AS n FROM t JOIN d ON t.g = d.g WHERE 10 / (t.id - 7) > -9 GROUP BY d.k",
    "SELECT t.id, d.k FROM t JOIN d ON t.g = d.g WHERE 10 / (t.id + 1) > 0 ORDER BY t.id LIMIT 5",
]
HEALTHY = [  # one row, also where a worker or every worker has no matching row
    "SELECT count(*) FROM t WHERE v > 1e9",
    "SELECT count(*), sum(v) FROM t WHERE id = 3",
    "SELECT count(*), min(v) FROM t WHERE id IN (1, 2, 3)",
    "SELECT sum(10 / (id + 1)) AS s FROM t",
    "SELECT g, sum(10 / (id + 1)) AS s FROM t WHERE v > 1e9 GROUP BY g",  # empty, not failed
    "SELECT id, 10 / (id + 1) AS x FROM t WHERE id = 12",
]


@pytest.fixture(scope="module", params=[2, 3], ids=["w2", "w3"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    with open_pair(DDL, DATA, request.param) as both:
        yield both


@pytest.mark.parametrize("sql", SWALLOWED + GROUPED + BROADCAST + HEALTHY)
def test_failing_queries_answer_like_one_instance(pair: tuple[Any, Any], sql: str) -> None:
    check(pair, sql)


def test_swallowed_error_cases_are_two_phase_plans(pair: tuple[Any, Any]) -> None:
    """The cases above exercise the rule, not the gather path."""
    _, cluster = pair
    catalog: Catalog = cluster._catalog
    for sql in SWALLOWED[:3]:
        plan = split.plan(sql, catalog)
        assert plan is not None and plan.rule is split.Rule.TWO_PHASE and plan.one_row_each, sql
