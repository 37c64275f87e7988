"""Answers any SELECT exactly: gather the rows it reads into one engine and run it there.

This is the planner's fallback path, correct for every query one native instance answers:
the gather engine holds exactly the rows the workers hold, as one batch per relation, so its
answer is the single instance's answer. Faster plans push work to the workers instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from laminardb.api.errors import from_wire, to_wire
from laminardb.cluster.catalog import Catalog

Fetch = Callable[[str, int | None], pa.Table]


def run(sql: str, tables: Iterable[str], catalog: Catalog, fetch: Fetch) -> pa.Table:
    """Rows of `sql`, computed in a fresh engine loaded with the relations it reads."""
    import laminardb_native as native

    engine: Any = native.open(":memory:")
    try:
        for name in tables:
            relation = catalog.get(name)
            if relation is None:
                continue
            for ddl in relation.gather_ddl():
                engine.execute(ddl)
            data = fetch(f"SELECT * FROM {relation.name}", relation.home)
            if data.num_rows:
                batches = data.combine_chunks().to_batches()
                engine.insert(relation.name, batches[0] if len(batches) == 1 else data)
        return engine.sql(sql).to_arrow()
    except Exception as exc:
        raise native_to_ours(exc) from None
    finally:
        engine.close()


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


def explain_rows(sql: str, tables: Iterable[str], workers: int) -> list[tuple[str, str]]:
    """Our distributed plan, as rows prepended to the engine's explain output."""
    names = sorted(tables)
    return [
        ("distributed_plan", "gather"),
        ("workers", ",".join(str(i) for i in range(workers))),
        ("worker_sql", "; ".join(f"SELECT * FROM {n}" for n in names) or "(none)"),
        ("merge", "run the query on one engine over the gathered rows"),
    ]
