"""VAR/STDDEV/MEDIAN inside expressions, HAVING and ORDER BY: a merge in two stages.

The engine has no SQL that merges the per-worker partials of these aggregates (count, mean
and var_pop for VAR/STDDEV, (value, row count) pairs for MEDIAN), so only `fastmerge`
combines them (Chan's parallel formula, a weighted median). When the rest of the query needs
the SQL merge (an expression over them, HAVING, an ORDER BY expression, another aggregate
only SQL merges), `split` writes that merge with each such aggregate as `MAX("_mN")` and
attaches a `Staged`: `attach` first computes every such aggregate's final value per group in
process and puts it beside each partial row of its group as column `_mN`, then the SQL merge
runs over those widened partials (`distributed`). All rows of a group hold the same `_mN`,
so MAX of them is the group's value, NULL for an empty or all-NULL group, and over no rows
at all (a global aggregate of nothing) MAX gives NULL as the engine's VAR/MEDIAN do. The
value's type is the engine's own (DOUBLE for VAR/STDDEV, the argument's type for MEDIAN);
`distributed` still checks the answer's types against the native probe.

Pure logic (pyarrow and numpy, no I/O): `attach` returns None whenever it cannot promise the
engine's grouping or values (NaN or a zero in a floating-point group key, NaN or a
non-numeric MEDIAN argument), and the caller then gathers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from laminardb.plan import fastmerge

STAGE_MEDIAN = True
"""Whether a MEDIAN / PERCENTILE_CONT inside an expression is merged in two stages. Its
partials hold one row per distinct (group, value) per worker: fast with few distinct values,
slower than gathering with many, so a plan learnt to ship mostly distinct values is
gathered (`ranks`); VAR/STDDEV ship one row per group per worker and are always staged."""

MOMENT_KINDS = frozenset(
    {"var_samp", "var_pop", "stddev_samp", "stddev_pop", *fastmerge.RANK_KINDS}
)
"""The aggregate kinds (`fastmerge` names) that only the in-process merge combines."""


@dataclass(frozen=True)
class Staged:
    """The in-process first stage of a two-stage merge.

    The partials are grouped by `keys` (none: one global group); every entry of `moments` is
    (column, kind, partial columns...): `fastmerge`'s output tuple for that aggregate with the
    name of the column `attach` adds first, e.g. ("_m0", "var_samp", "_a0", "_a1", "_a2") or
    ("_m1", "median", "_d0", "_a3").
    """

    keys: tuple[str, ...]
    moments: tuple[tuple[str, ...], ...]


def column(position: int) -> str:
    """The name of the column that holds the moment registered at `position`."""
    return f"_m{position}"


def staged(keys: int, found: Iterable[tuple[str, ...]]) -> Staged:
    """The `Staged` of a plan with `keys` group keys (`_k0`...) and the aggregates `found`
    by `split` (kind and partial columns, in the order `column` numbers them; distinct
    counts among them are merged by SQL and skipped)."""
    entries = tuple(
        (column(i), *spec) for i, spec in enumerate(s for s in found if s[0] in MOMENT_KINDS)
    )
    return Staged(tuple(f"_k{i}" for i in range(keys)), entries)


def describe(plan: Staged) -> str:
    """The first stage for `explain`, e.g. `in process: _m0 = var_samp per group`."""
    found = ", ".join(f"{entry[0]} = {entry[1]} per group" for entry in plan.moments)
    return f"in process: {found}"


def attach(plan: Staged, partials: pa.Table) -> pa.Table | None:
    """`partials` with one more column per entry of `plan.moments`: the aggregate's final
    value for the row's group. None when the engine could answer differently (the caller
    gathers instead)."""
    for key in plan.keys:
        values = partials.column(key)
        if pa.types.is_floating(values.type) and _nan_or_zero(values):
            return None  # NaN and -0.0 / 0.0 grouping: left to the engine
    for entry in plan.moments:
        if entry[1] in fastmerge.RANK_KINDS:
            typ = partials.schema.field(entry[2]).type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
                return None
            if pa.types.is_floating(typ) and pc.any(pc.is_nan(partials.column(entry[2]))).as_py():
                return None  # the engine orders NaN last; the weighted median does not
    rows = partials.num_rows
    positions = pa.array(np.arange(rows, dtype=np.int64))
    if plan.keys:
        numbered = partials.select(list(plan.keys)).append_column("__row", positions)
        groups = numbered.group_by(list(plan.keys)).aggregate([("__row", "list")])
        lists = groups.column("__row_list")
    else:
        offsets = pa.array([0, rows], pa.int32())
        lists = pa.chunked_array([pa.ListArray.from_arrays(offsets, positions)])
    group_of = _group_of_rows(lists, rows)
    out = partials
    for entry in plan.moments:
        name, kind, *names = entry
        if kind == "median":
            values = fastmerge._median(names[0], names[1], partials, lists)
        elif kind == "percentile":
            values = fastmerge._percentile(names[0], names[1], float(names[2]), partials, lists)
        else:
            values = fastmerge._moment(kind, tuple(names), partials, lists)
        out = out.append_column(name, values.take(pa.array(group_of)))
    return out


def _group_of_rows(lists: pa.ChunkedArray, rows: int) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    """For every partial row, the position of its group in `lists` (each group's rows)."""
    combined = lists.combine_chunks()
    sizes = pc.list_value_length(combined).to_numpy(zero_copy_only=False)
    flat = np.asarray(pc.list_flatten(combined).to_numpy(zero_copy_only=False), np.int64)
    group_of = np.zeros(rows, np.int64)
    group_of[flat] = np.repeat(np.arange(len(combined), dtype=np.int64), sizes)
    return group_of


def _nan_or_zero(values: pa.ChunkedArray) -> bool:
    """Whether a floating-point key holds NaN or a zero (either sign): the only values whose
    grouping could differ from pyarrow's exact equality."""
    nan = pc.any(pc.is_nan(values)).as_py()
    return bool(nan or pc.any(pc.equal(values, 0)).as_py())
