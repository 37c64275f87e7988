"""Answers any SELECT exactly: gather the rows it reads into one engine and run it there.

This is the planner's fallback path, correct for every query one native instance answers:
the gather engine holds the rows of every relation the query reads, as one batch per
relation, so its answer is the single instance's answer. Only what the query needs leaves a
worker (`pushdown`): the columns it references and the rows that pass the WHERE conjuncts
that filter one relation alone; a relation whose columns the query never names arrives as a
row count (a column of NULLs in the gather engine). If anything fails with pushdown (the
workers or the engine raise), the query runs again over whole relations, so an error is
always the one native gives for the query as written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from laminardb.api.errors import ConnectionError, from_wire, to_wire
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import pushdown

Fetch = Callable[[str, int | None], pa.Table]

log = logging.getLogger(__name__)


def run(sql: str, tables: Iterable[str], catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Rows of `sql`, computed in a fresh engine loaded with the relations it reads."""
    names = list(tables)
    fetches = pushdown.plan(sql, catalog, names)
    if any(f.pushed for f in fetches.values()):
        try:
            return _run(sql, names, catalog, fetch, fetches)
        except ConnectionError:
            raise  # a worker is gone: the caller's recovery handles it
        except Exception as exc:
            log.debug("gather with pushdown failed, again over whole relations: %s", exc)
    return _run(sql, names, catalog, fetch, {})


def _run(
    sql: str,
    tables: list[str],
    catalog: Catalog,
    fetch: Fetch,
    fetches: dict[str, pushdown.Fetch],
) -> pa.Table:
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        for name in tables:
            relation = catalog.get(name)
            if relation is None:
                continue
            plan = fetches.get(relation.name) or pushdown.full(relation.name)
            shipped, data = _load(relation, plan, fetch)
            for ddl in shipped.gather_ddl():
                engine.execute(ddl)
            if data.num_rows:
                batches = data.combine_chunks().to_batches()
                engine.insert(relation.name, batches[0] if len(batches) == 1 else data)
        return engine.sql(sql).to_arrow()
    except ConnectionError:
        raise
    except Exception as exc:
        raise native_to_ours(exc) from None
    finally:
        engine.close()


def _load(relation: Relation, plan: pushdown.Fetch, fetch: Fetch) -> tuple[Relation, pa.Table]:
    """The relation as the gather engine declares it, and its rows, fetched by `plan`."""
    data = fetch(plan.sql, relation.home)
    if plan.columns is None:
        return relation, data
    if plan.count_only:
        # Any one column keeps the row count: the query names none of them.
        field = relation.schema.field(0).with_nullable(True)
        rows = int(pc.sum(data.column(0)).as_py() or 0) if data.num_rows else 0
        data = pa.table([pa.nulls(rows, field.type)], schema=pa.schema([field]))
        return dataclasses.replace(relation, schema=data.schema), data
    schema = pa.schema([relation.schema.field(c) for c in plan.columns])
    return dataclasses.replace(relation, schema=schema), data


def warm_up() -> None:
    """Start the engine runtime in this process now (its first query costs about half a second)."""
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        engine.sql("SELECT 1").to_arrow()
    finally:
        engine.close()


def native_to_ours(exc: Exception) -> Exception:
    """The same error as our class (native classes cannot cross to the caller's except clauses)."""
    if type(exc).__module__ == "laminardb":
        return from_wire(*to_wire(exc))
    return exc


def explain_rows(
    sql: str, tables: Iterable[str], workers: int, catalog: Catalog | None = None
) -> list[tuple[str, str]]:
    """Our distributed plan, as rows prepended to the engine's explain output: the SQL each
    worker runs per relation (after pushdown when `catalog` is given)."""
    names = sorted(tables)
    if catalog is None:
        worker_sql = [pushdown.full(n).sql for n in names]
    else:
        fetches = pushdown.plan(sql, catalog, names)
        worker_sql = [(fetches.get(n) or pushdown.full(n)).sql for n in sorted(fetches)]
    return [
        ("distributed_plan", "gather"),
        ("workers", ",".join(str(i) for i in range(workers))),
        ("worker_sql", "; ".join(worker_sql) or "(none)"),
        ("merge", "run the query on one engine over the gathered rows"),
    ]
