"""Queries answered from the batches a worker handed its engine, without the engine (issue 3).

The engine spends about a millisecond planning any query, whatever the rows (`SELECT 1`
costs 0.4 to 0.5 ms, `count(*), sum(v)` over 1,000 rows 0.9 to 1.1 ms), and that cost does
not split across workers: it was most of a distributed global count/sum and of a point
lookup. The rows of a source that no stream reads are exactly the batches the worker
inserted: the engine keeps them zero-copy, and the worker compacts a source long before the
engine would drop any (`workers/engine.py`). So two shapes of query are answered from those
same buffers: whole-source aggregates (`aggregates.py`) and key lookups (`lookups.py`).

The first query of each shape is the engine's: its answer gives the schema (names, types,
nullability) every later answer of that shape takes, and is compared with what the mirror
computes. A shape whose answers ever differed is left to the engine from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from workers.mirror import aggregates, lookups


class Plan(Protocol):
    """A query the mirror can answer."""

    @property
    def source(self) -> str: ...

    @property
    def shape(self) -> str: ...

    def evaluate(self, batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table | None: ...

    def agrees(self, mine: pa.Table, engine: pa.Table) -> bool: ...


def parse(sql: str) -> Plan | None:
    """What `sql` asks of the mirror, or None when only the engine can answer it."""
    return aggregates.parse(sql) or lookups.parse(sql)


def inserts_only(create_sql: str) -> bool:
    """Whether `CREATE SOURCE name (columns)` has nothing after its column list: a `WITH`
    or `FROM` there may name a connector (Kafka, CDC, Delta Lake, ...) that feeds the
    source rows the worker never inserted."""
    depth = 0
    quote = ""
    for i, char in enumerate(create_sql):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return not create_sql[i + 1 :].strip().rstrip(";").strip()
    return False


MAX_SHAPES = 256
"""Shapes whose engine schema (or refusal) a worker remembers."""


@dataclass
class Mirror:
    """The batches handed to the engine for each source whose rows they are exactly (None
    where they are not), and per source the engine's schema for each shape already answered
    (None: a shape the engine answered otherwise)."""

    batches: dict[str, list[pa.RecordBatch] | None] = field(default_factory=dict)
    schemas: dict[str, dict[str, pa.Schema | None]] = field(default_factory=dict)
    answers: int = 0
    """Queries answered here (the worker's `stats`)."""

    def query(self, sql: str, engine: Callable[[], pa.Table]) -> pa.Table:
        """The answer to `sql`: from the mirror where it can be, else `engine()`'s."""
        plan = parse(sql)
        batches = None if plan is None else self.batches.get(plan.source)
        if plan is None or batches is None:
            return engine()
        learnt = self.schemas.setdefault(plan.source, {})
        if plan.shape in learnt:
            schema = learnt[plan.shape]
            mine = None if schema is None else plan.evaluate(batches, schema)
            if mine is not None:
                self.answers += 1
                return mine
            return engine()
        table = engine()
        mine = plan.evaluate(batches, table.schema)
        if mine is not None:  # None: this query is not one the mirror answers; learn nothing
            if len(learnt) >= MAX_SHAPES:
                learnt.clear()
            learnt[plan.shape] = table.schema if plan.agrees(mine, table) else None
        return table

    def forget(self, source: str) -> None:
        """`source` was created again, altered or dropped: what its answers looked like is
        learnt again (a column's type may have changed)."""
        self.schemas.pop(source, None)
