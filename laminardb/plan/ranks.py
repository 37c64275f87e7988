"""Learn which MEDIAN / PERCENTILE_CONT plans ship nearly every row, and gather those.

Their two-phase plan asks each worker for one row per distinct (group, value) with its row
count. With few distinct values that is a handful of rows and the merge is 2 to 4x faster
than gathering; with mostly distinct values (a DOUBLE measurement) it is every row plus a
count, a worker-side GROUP BY over them and a sort in the coordinator: measured 1.4x (1,000
distinct integers a group) to 8x (distinct doubles) slower than the gather path, which ships
the values and lets one engine rank them. Nothing says in advance which case a column is,
so execution learns it: after a run, a plan whose partial rows were more than `WIDE` of the
rows they count is marked, and for `RELEARN_S` it goes straight to the gather path (then
the two-phase plan is tried again, in case the data changed).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Hashable

import pyarrow as pa
import pyarrow.compute as pc

from laminardb.plan.fastmerge import RANK_KINDS, Spec
from laminardb.plan.moments import Staged

WIDE = 0.1
"""Partial rows per counted row above which the values are treated as mostly distinct."""
RELEARN_S = 300.0
"""How long a plan learnt wide is gathered before its two-phase plan is tried again."""
_KEEP = 1024

_lock = threading.Lock()
_wide: collections.OrderedDict[Hashable, float] = collections.OrderedDict()


def weight_column(spec: Spec | None, staged: Staged | None = None) -> str | None:
    """The row-count partial of a plan that ranks values (MEDIAN / PERCENTILE_CONT), merged
    in process (`spec`) or as the first stage of a SQL merge (`staged`), else None."""
    for output in spec.outputs if spec is not None else ():
        if output[0] in RANK_KINDS:
            return output[2]
    for entry in staged.moments if staged is not None else ():
        if entry[1] in RANK_KINDS:
            return entry[3]
    return None


def is_wide(key: Hashable, now: float | None = None) -> bool:
    """Whether the plan `key` was learnt to ship mostly distinct values, recently."""
    now = time.monotonic() if now is None else now
    with _lock:
        since = _wide.get(key)
        if since is not None and now - since > RELEARN_S:
            del _wide[key]
            since = None
    return since is not None


def learn(key: Hashable, partials: pa.Table, weight: str, now: float | None = None) -> None:
    """Record how many partial rows the plan `key` shipped for the rows they count."""
    counted = pc.sum(partials.column(weight)).as_py() or 0
    wide = partials.num_rows > WIDE * counted and partials.num_rows > 1_000
    with _lock:
        if not wide:
            _wide.pop(key, None)
            return
        _wide[key] = time.monotonic() if now is None else now
        _wide.move_to_end(key)
        while len(_wide) > _KEEP:
            _wide.popitem(last=False)


def forget() -> None:
    """Drop everything learnt (tests)."""
    with _lock:
        _wide.clear()
