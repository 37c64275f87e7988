"""A native instance and a cluster holding the same rows, and the check that they answer
alike: shared by the planner rules' differential tests (joins, broadcast, pushdown)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
from harness import compare_outcomes, open_single, run_query

import laminardb


@contextlib.contextmanager
def open_pair(
    ddl: Mapping[str, tuple[str, str]],
    data: Mapping[str, pa.Table],
    workers: int,
    table_sql: Iterable[str] = (),
) -> Iterator[tuple[Any, Any]]:
    """(single native instance, cluster of `workers` with every insert split over them),
    each given `ddl` (name -> (statement, the cluster's PARTITION BY suffix)), then the
    statements `table_sql`, then the rows `data`."""
    single = open_single()
    cluster = laminardb.open(":memory:", workers=workers, split_rows=1)
    try:
        for sql, key in ddl.values():
            single.execute(sql)
            cluster.execute(sql + key)
        for sql in table_sql:
            single.execute(sql)
            cluster.execute(sql)
        for name, table in data.items():
            single.insert(name, table)
            cluster.insert(name, table)
        yield single, cluster
    finally:
        cluster.close()
        single.close()


def ordered(sql: str) -> bool:
    """Whether the query's top level sorts (an ORDER BY after the last closing bracket)."""
    return " ORDER BY " in sql.upper().rsplit(")", 1)[-1]


def check(pair: tuple[Any, Any], sql: str) -> None:
    """Both answer `sql` alike: the same rows (in order when it sorts), or the same error."""
    single, cluster = pair
    expected, actual = run_query(single, sql), run_query(cluster, sql)
    diff = compare_outcomes(expected, actual, ordered(sql))
    assert diff is None, f"{sql}\n{diff}"
