"""Combining the partial aggregates of one window (or pane) into final values (pure logic).

The workers' partial rows of a merged window stream (merge.py) carry, per group, a row count
(`__n`, and `__m` for the rows that pass the stream's WHERE) and the partial state of each
aggregate (COUNT/SUM/MIN/MAX; AVG as SUM + COUNT). `combine` adds them up per group;
`final` turns one aggregate's combined state into the value the stream emits.

DISTINCT aggregates (all over one argument) are computed from the distinct values
themselves: the partial stream then also groups by that argument (`__d`), so after the
partials of a group are combined per distinct value, counting (or summing, ...) the values
of rows that passed the WHERE gives `COUNT(DISTINCT x)`, `SUM(DISTINCT x)` and so on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

_KEEP = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)
_COMBINE = {"count": "sum", "sum": "sum", "avg": "sum", "min": "min", "max": "max"}
_DISTINCT = {"count": ("count",), "sum": ("sum",), "avg": ("sum", "count"), "min": ("min",)}
_DISTINCT["max"] = ("max",)


@dataclass(frozen=True)
class Agg:
    """One aggregate of the stream: `kind` and the partial columns that carry its state
    (none for a DISTINCT aggregate: it is computed from the distinct values `__d`)."""

    kind: str  # count | sum | min | max | avg
    columns: tuple[str, ...]
    distinct: bool = False


def combine(
    aggs: tuple[Agg, ...], groups: int, filtered: bool, parts: list[pa.Table]
) -> pa.Table | None:
    """Partials of one window grouped by the stream's groups, states combined; None if empty
    (groups whose rows were all filtered out by the WHERE are left out, as natively)."""
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="permissive")
    keys = [f"__g{i}" for i in range(groups)]
    count_column = "__m" if filtered else "__n"
    specs: list[tuple[str, str]] = [(count_column, "sum")]
    for agg in aggs:
        if not agg.distinct:
            specs += [(column, _COMBINE[agg.kind]) for column in agg.columns[:1]]
            specs += [(column, "sum") for column in agg.columns[1:]]
    specs = list(dict.fromkeys(specs))  # aggregates may share a partial column (`shared`)
    if any(agg.distinct for agg in aggs):
        table = _grouped(table, [*keys, "__d"], specs)  # one row per group and distinct value
        alive = pc.fill_null(pc.greater(table.column(count_column), 0), False)
        values = pc.if_else(
            alive, table.column("__d"), pa.scalar(None, table.schema.field("__d").type)
        )
        table = table.append_column("__dv", values)
        hows = sorted({how for agg in aggs if agg.distinct for how in _DISTINCT[agg.kind]})
        specs += [("__dv", how) for how in hows]
    grouped = _grouped(table, keys, specs, rename=False)
    alive = pc.fill_null(pc.greater(grouped.column(f"{count_column}_sum"), 0), False)
    grouped = grouped.filter(alive)
    return grouped if grouped.num_rows else None


def shared(items: list[str], aggs: list[Agg]) -> tuple[list[str], list[Agg]]:
    """Select items `<expr> AS <alias>` without repeats of an expression, and the aggregates
    with their columns pointing at its first alias. (A native non-windowed aggregate that
    repeats an aggregate expression emits each cycle's rows instead of cumulative totals.)"""
    first: dict[str, str] = {}
    alias_of: dict[str, str] = {}
    kept: list[str] = []
    for item in items:
        expr, alias = item.rsplit(" AS ", 1)
        if expr in first:
            alias_of[alias] = first[expr]
        else:
            first[expr] = alias
            kept.append(item)
    moved = [replace(a, columns=tuple(alias_of.get(c, c) for c in a.columns)) for a in aggs]
    return kept, moved


def _grouped(
    table: pa.Table, keys: list[str], specs: list[tuple[str, str]], rename: bool = True
) -> pa.Table:
    """`table` grouped by `keys` (none: one row), each spec's column aggregated; with `rename`
    the results keep their column names (else they are named `<column>_<how>`)."""
    options = [
        (c, how, pc.CountOptions(mode="only_valid") if how == "count" else _KEEP)
        for c, how in specs
    ]
    grouped = table.group_by(keys, use_threads=False).aggregate(options)
    if not rename:
        return grouped
    names = {f"{c}_{how}": c for c, how in specs}
    return grouped.rename_columns([names.get(n, n) for n in grouped.column_names])


def final(agg: Agg, merged: pa.Table) -> pa.ChunkedArray | pa.Array:
    """The emitted value of one aggregate from a table that `combine` returned."""
    if agg.distinct:
        if agg.kind == "avg":
            return _average(merged.column("__dv_sum"), merged.column("__dv_count"))
        column = merged.column(f"__dv_{_DISTINCT[agg.kind][0]}")
        return pc.fill_null(column, 0) if agg.kind == "count" else column
    column = merged.column(f"{agg.columns[0]}_{_COMBINE[agg.kind]}")
    if agg.kind == "count":
        return pc.fill_null(column, 0)
    if agg.kind == "avg":
        return _average(column, merged.column(f"{agg.columns[1]}_sum"))
    return column


def _average(total: pa.ChunkedArray, count: pa.ChunkedArray) -> pa.ChunkedArray:
    zero = pc.fill_null(pc.equal(count, 0), True)
    return pc.if_else(
        zero,
        pa.scalar(None, pa.float64()),
        pc.divide(total.cast(pa.float64()), pc.fill_null(count, 1).cast(pa.float64())),
    )
