"""Refusals are cached like plans, statement classification is cached, and `explain` shows
only plans execution would run, with the bytes the workers would send back.

Pure planning plus native probes over empty relations (no cluster): `fetch` is a stand-in
that answers each worker's `count(*)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pytest

from laminardb.api.errors import QueryError
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import distributed, explain, extended, statements
from laminardb.plan.joins import LocalPlan

pytestmark = pytest.mark.timeout(60)

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.int64()), ("s", pa.string())])


def catalog_with(*names: str) -> Catalog:
    found = Catalog()
    for name in names:
        found.add(Relation(name, "source", SCHEMA, f"-- {name}", partition_by=("k",)))
    return found


def counts(rows_per_worker: int, workers: int = 3) -> distributed.Fetch:
    def fetch(sql: str, shards: list[int] | None) -> Sequence[pa.Table]:
        assert sql.startswith("SELECT count(*) FROM ")
        return [pa.table({"n": [rows_per_worker]})] * (workers if shards is None else len(shards))

    return fetch


def test_classify_is_cached_and_errors_are_not() -> None:
    sql = "SELECT k FROM planner2_cache_probe"
    assert statements.classify(sql) is statements.classify(sql)
    for _ in range(2):
        with pytest.raises(QueryError):
            statements.classify("   ")


def test_a_refusal_is_remembered_until_the_catalog_changes() -> None:
    sql = "SELECT a.k, b.v FROM a JOIN b ON a.k = b.k"
    catalog = catalog_with("a", "x")
    assert distributed.cached_plan(sql, catalog) is None
    assert extended.cached_plan(sql, catalog) is None
    assert distributed.refused(extended._refused, sql, distributed.catalog_key(catalog))
    catalog.add(Relation("b", "source", SCHEMA, "-- b", partition_by=("k",)))
    found = extended.cached_plan(sql, catalog)
    assert isinstance(found, LocalPlan) and found.worker_sql == sql


def test_a_replaced_relation_invalidates_the_refusal() -> None:
    sql = "SELECT a.k, b.v FROM a JOIN b ON a.k = b.k"
    catalog = catalog_with("a")
    catalog.add(Relation("b", "source", SCHEMA, "-- b spread"))  # not keyed: gathered
    assert extended.cached_plan(sql, catalog) is None
    catalog.remove("b")
    catalog.add(Relation("b", "source", SCHEMA, "-- b keyed", partition_by=("k",)))
    assert extended.cached_plan(sql, catalog) is not None


def test_explain_shows_bytes_back_for_a_global_aggregate() -> None:
    catalog = catalog_with("t")
    shown = explain.rows("SELECT count(*), sum(v) FROM t", catalog, 3, counts(1000))
    assert shown is not None
    rows = dict(shown)
    assert rows["distributed_plan"] == "two-phase"
    assert "checked" not in rows
    assert rows["bytes_back"].startswith("<= ") and "(<= 3 rows x " in rows["bytes_back"]


def test_explain_bounds_a_top_n_by_its_limit() -> None:
    catalog = catalog_with("t")
    shown = explain.rows("SELECT k, s FROM t ORDER BY v DESC LIMIT 5", catalog, 3, counts(1000))
    rows = dict(shown or [])
    assert "(<= 15 rows x " in rows["bytes_back"] and rows["bytes_back"].endswith("their text)")


def test_explain_bounds_a_filter_by_the_rows_read() -> None:
    catalog = catalog_with("t")
    rows = dict(explain.rows("SELECT k, v FROM t WHERE v > 3", catalog, 2, counts(10, 2)) or [])
    assert rows["bytes_back"] == "<= 340 bytes (<= 20 rows x 17 bytes)"


def test_explain_never_shows_a_plan_execution_refuses() -> None:
    catalog = catalog_with("t", "u")
    bad = "SELECT no_such_column FROM t"  # split plans it; the native probe rejects it
    assert distributed.cached_plan(bad, catalog) is not None
    assert explain.rows(bad, catalog, 2, counts(1)) is None
    join = "SELECT t.no_such_column FROM t JOIN u ON t.k = u.k"
    assert extended.cached_plan(join, catalog) is not None
    assert extended.explain_rows(join, catalog, 2) is None


def test_explain_rows_without_a_check_say_so() -> None:
    catalog = catalog_with("t")
    found = distributed.cached_plan("SELECT sum(v) FROM t", catalog)
    assert found is not None
    rows = dict(distributed.explain_rows(found, 2))
    assert rows["checked"].startswith("at run time")
