"""What a distributed plan is: the SQL each worker runs and the merge over their partials.

Shared by the rules that make plans (`split`, `twophase`) and the code that runs them
(`distributed`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from laminardb.plan import moments
from laminardb.plan.fastmerge import Spec

PARTIALS = "__ldb_partials"
"""The relation that holds the concatenated partials in the merge engine."""


class Rule(enum.Enum):
    """Which rewrite produced a plan."""

    PUSHDOWN = "pushdown"
    KEYED_GROUP = "keyed-group"
    TWO_PHASE = "two-phase"
    DISTINCT = "distinct"


@dataclass(frozen=True)
class Plan:
    """How to answer `sql` from the workers.

    Every worker in `shards` (None: all of them) runs `worker_sql`; the columns of its result
    are renamed by position to `partial_columns` and the results concatenated. With
    `merge_sql` None the concatenation is the answer, else `merge_sql` runs over it as
    relation `PARTIALS` in a fresh engine. The answer then gets the names and types the
    native engine gives `sql` (the merge only computes the values).
    """

    rule: Rule
    sql: str
    relation: str
    shards: tuple[int, ...] | None
    worker_sql: str
    partial_columns: tuple[str, ...]
    merge_sql: str | None
    vshards: tuple[int, ...] | None = None
    """The virtual shards that can hold a row the query reads (None: any): from key
    equality / IN-lists (`routing`). When they all live on one worker, `distributed` runs
    the original query there as written instead of `worker_sql` and the merge."""
    fast: Spec | None = None
    """An in-process merge equal to `merge_sql`, when the merge is simple (`fastmerge`)."""
    staged: moments.Staged | None = None
    """VAR/STDDEV/MEDIAN values per group to add to the partials before `merge_sql` runs
    (`moments`: the merge SQL reads them as `MAX("_mN")`)."""
    one_row_each: bool = False
    """Each worker's partial is one row (an aggregate without GROUP BY). A worker that
    returns none hit a run-time error that its engine swallowed (a division by zero): the
    native engine, reading that row too, then answers nothing, and so does the plan."""


def limits(limit: int | None, offset: int | None) -> str:
    """` LIMIT n OFFSET m`, each part only when given."""
    return (f" LIMIT {limit}" if limit is not None else "") + (
        f" OFFSET {offset}" if offset is not None else ""
    )
