"""In-process merges with pyarrow compute, for plans whose merge is simple.

The SQL merge (`split.Plan.merge_sql`) runs in a fresh native engine: about 2 to 3 ms of fixed
cost (open, declare, insert, plan) plus the work, which dominates small queries. When the
merge only regroups partials with decomposable aggregates (COUNT, SUM, MIN, MAX, BOOL_AND,
BOOL_OR), sorts by output columns and cuts (LIMIT / OFFSET), pyarrow computes the same
values in process. `split` attaches a `Spec` to such plans; `run` returns None whenever it
cannot promise the native answer (a floating-point group key, a NaN in a sort key), and the
caller then runs the SQL merge. `distributed` also checks the result's types against the
native schema before using it. One integer group key in a narrow range is regrouped with
numpy (`regroup`: no hashing, the large-partials case); a co-partitioned join's merge that
only sorts and cuts is read from its SQL (`cut`).

Semantics matched (native = DataFusion in laminardb 0.17.0): SUM of integers wraps around
like native's (pyarrow's `sum` is unchecked); SUM/MIN/MAX/BOOL_* of nothing but NULLs is
NULL and a COUNT of nothing is 0; NULL is a group of its own; ASC sorts NULLs last and DESC
first unless NULLS FIRST/LAST says otherwise; strings sort by their UTF-8 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from laminardb.plan import regroup

PARALLEL_ROWS = 65_536
"""Partials from which the regrouping uses pyarrow's threads (the workers are idle by then)."""

_HASH_FUNCTION = {
    "count": "sum",
    "sum": "sum",
    "min": "min",
    "max": "max",
    "bool_and": "all",
    "bool_or": "any",
}
"""Merge of each partial aggregate kind, as a pyarrow (hash) aggregate function."""

RANK_KINDS = frozenset({"median", "percentile"})
"""Aggregates merged by ranking each group's (value, row count) partials."""

_SCALAR: dict[str, Any] = {
    "sum": pc.sum,
    "min": pc.min,
    "max": pc.max,
    "all": pc.all,
    "any": pc.any,
    "count_distinct": lambda values: pc.count_distinct(values, mode="only_valid"),
}


@dataclass(frozen=True)
class SortKey:
    """One ORDER BY key: a column of the merged table and its direction."""

    column: str
    desc: bool
    nulls_first: bool


@dataclass(frozen=True)
class Spec:
    """What the merge computes.

    With `grouped` the partials are grouped by `keys` (no keys: one global group) and each
    output is ("key", column) or (kind, partial column) with kind a key of `_HASH_FUNCTION`;
    without, each output is ("col", column) of the concatenated partials. Then the rows are
    sorted by `order` (columns of the partials, or `_o<i>` for output i) and cut.
    """

    grouped: bool
    keys: tuple[str, ...]
    outputs: tuple[tuple[str, ...], ...]
    order: tuple[SortKey, ...]
    limit: int | None
    offset: int | None


_CUT = re.compile(
    r"SELECT \* FROM (?P<table>\w+)"
    r"(?: ORDER BY (?P<order>.+?))?(?: LIMIT (?P<limit>\d+))?(?: OFFSET (?P<offset>\d+))?"
)
_CUT_KEY = re.compile(r'\("(_p\d+)"\) (ASC|DESC) NULLS (FIRST|LAST)')


def cut_spec(merge_sql: str, table: str, columns: int) -> Spec | None:
    """The `Spec` of a merge that only sorts and cuts every column of `table` (the merge SQL
    of a co-partitioned join's plan: `SELECT * FROM t ORDER BY ("_p1") DESC NULLS FIRST
    LIMIT 10`), or None for any other SQL (which then runs in an engine)."""
    found = _CUT.fullmatch(merge_sql)
    if found is None or found["table"] != table:
        return None
    order: list[SortKey] = []
    for item in (found["order"] or "").split(", ") if found["order"] else []:
        key = _CUT_KEY.fullmatch(item)
        if key is None or int(key[1][2:]) >= columns:
            return None
        order.append(SortKey(key[1], key[2] == "DESC", key[3] == "FIRST"))
    outputs = tuple(("col", f"_p{i}") for i in range(columns))
    limit, offset = found["limit"], found["offset"]
    return Spec(
        False,
        (),
        outputs,
        tuple(order),
        None if limit is None else int(limit),
        None if offset is None else int(offset),
    )


def cut(merge_sql: str, table: str, rows: pa.Table) -> pa.Table | None:
    """`merge_sql` over `rows` (held as `table`) computed in process when it only sorts and
    cuts (`cut_spec`), saving a fresh engine's 2 to 3 ms; None when the caller must run it."""
    spec = cut_spec(merge_sql, table, rows.num_columns)
    if spec is None:
        return None
    try:
        return run(spec, rows)
    except (pa.ArrowException, ValueError, TypeError):  # e.g. a type no kernel sorts
        return None


def run(spec: Spec, partials: pa.Table) -> pa.Table | None:
    """The merged answer (columns `_o0`…), or None when pyarrow's answer could differ from
    the engine's (the caller then runs the SQL merge)."""
    if _is_global(spec):
        return _global(spec, partials)
    if spec.grouped:
        if any(pa.types.is_floating(partials.schema.field(k).type) for k in spec.keys):
            return None  # NaN and -0.0 grouping: left to the engine
        grouped = _grouped(spec, partials)
        if grouped is None:
            return None
        table = grouped
    else:
        table = partials
    names = [f"_o{i}" for i in range(len(spec.outputs))]
    if spec.order:
        wanted = None if spec.limit is None else (spec.offset or 0) + spec.limit
        indices = _sort_indices(table, spec.order, spec.outputs, spec.grouped, wanted)
        if indices is None:
            return None
        table = table.take(indices)
    start = spec.offset or 0
    if start or spec.limit is not None:
        table = table.slice(start, spec.limit)
    columns = [table.column(_source(spec.grouped, out, i)) for i, out in enumerate(spec.outputs)]
    return pa.Table.from_arrays(columns, names=names)


def _is_global(spec: Spec) -> bool:
    """Whether `spec` is one global group of decomposable aggregates, nothing to sort or cut:
    a millisecond query's merge, computed without the grouping machinery."""
    return (
        spec.grouped
        and not spec.keys
        and not spec.order
        and spec.limit is None
        and not spec.offset
        and all(out[0] in _HASH_FUNCTION for out in spec.outputs)
    )


def _global(spec: Spec, partials: pa.Table) -> pa.Table | None:
    """The one row of a global `_is_global` merge (None: a NaN in a MIN/MAX, see `_grouped`)."""
    arrays = []
    for kind, column in spec.outputs:
        values = partials.column(column)
        if kind in ("min", "max") and _has_nan(values):
            return None
        array = _aggregated(values, _HASH_FUNCTION[kind])
        arrays.append(pc.fill_null(array, 0) if kind == "count" else array)
    return pa.Table.from_arrays(arrays, names=[f"_o{i}" for i in range(len(arrays))])


def _aggregated(values: pa.ChunkedArray, function: str) -> pa.Array:
    """`function` (a key of `_SCALAR`) over every value, as a one-row array."""
    scalar = _SCALAR[function](values)
    return pa.array([scalar.as_py()], scalar.type)


def _sortable(typ: pa.DataType) -> bool:
    """Whether pyarrow orders values of `typ` as the engine does (numbers, booleans, strings
    and bytes by their bytes, temporal values); other types are left to the engine."""
    t = pa.types
    return bool(
        t.is_integer(typ)
        or t.is_floating(typ)
        or t.is_boolean(typ)
        or t.is_string(typ)
        or t.is_large_string(typ)
        or t.is_binary(typ)
        or t.is_large_binary(typ)
        or t.is_temporal(typ)
        or t.is_decimal(typ)
    )


def _has_nan(column: pa.ChunkedArray) -> bool:
    """Whether a floating-point column holds a NaN (False for other types)."""
    return pa.types.is_floating(column.type) and bool(pc.any(pc.is_nan(column)).as_py())


def _source(grouped: bool, output: tuple[str, ...], i: int) -> str:
    """The column of the working table that holds output `i`."""
    return f"_o{i}" if grouped else output[1]


def _grouped(spec: Spec, partials: pa.Table) -> pa.Table | None:
    """One row per group: the key columns as they are, each output as `_o<i>` (None when
    the engine could answer differently: float or NaN values in a distinct count, NaN in a
    median or percentile)."""
    aggregates: list[tuple[Any, ...]] = [
        (o[1], _HASH_FUNCTION[o[0]]) for o in spec.outputs if o[0] in _HASH_FUNCTION
    ]
    for out in spec.outputs:
        if out[0] in ("min", "max") and _has_nan(partials.column(out[1])):
            return None  # pyarrow's MIN/MAX skip NaN; the engine's MAX is then NaN
    if any(o[0] == "count_distinct" for o in spec.outputs):
        if pa.types.is_floating(partials.schema.field("_d0").type):
            return None  # NaN and -0.0: left to the engine
        aggregates.append(("_d0", "count_distinct", pc.CountOptions(mode="only_valid")))
    if any(o[0] in RANK_KINDS for o in spec.outputs):
        typ = partials.schema.field("_d0").type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            return None
        if _has_nan(partials.column("_d0")):
            return None
    moments = any(o[0] in _MOMENTS or o[0] in RANK_KINDS for o in spec.outputs)
    if moments:
        partials = partials.append_column("__row", pa.array(np.arange(partials.num_rows)))
        aggregates.append(("__row", "list"))
    unique = list({a[:2]: a for a in aggregates}.values())
    dense = None
    if len(spec.keys) == 1:
        dense = regroup.regroup(partials, spec.keys[0], [a[:2] for a in unique])
    if dense is not None:  # one integer key in a narrow range: no hashing
        done = pa.table({spec.keys[0]: dense[0]})
        found = {a: pa.chunked_array([column]) for a, column in dense[1].items()}
    elif spec.keys:
        threads = partials.num_rows >= PARALLEL_ROWS  # group order is free: ORDER BY sets it
        done = partials.group_by(list(spec.keys), use_threads=threads).aggregate(unique)
        found = {a[:2]: done.column(f"{a[0]}_{a[1]}") for a in unique}
    else:
        found = {}
        for a in unique:
            if a[1] == "list":
                rows = pa.array([np.arange(partials.num_rows)], pa.list_(pa.int64()))
                found[a] = pa.chunked_array([rows])
                continue
            found[a[:2]] = pa.chunked_array([_aggregated(partials.column(a[0]), a[1])])
        done = pa.table({})
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for i, out in enumerate(spec.outputs):
        kind = out[0]
        if kind == "key":
            columns[f"_o{i}"] = done.column(out[1])
        elif kind in _MOMENTS:
            columns[f"_o{i}"] = _moment(kind, out[1:], partials, found[("__row", "list")])
        elif kind == "median":
            columns[f"_o{i}"] = _median(out[1], out[2], partials, found[("__row", "list")])
        elif kind == "percentile":
            rows = found[("__row", "list")]
            columns[f"_o{i}"] = _percentile(out[1], out[2], float(out[3]), partials, rows)
        elif kind == "count_distinct":
            columns[f"_o{i}"] = found[("_d0", "count_distinct")]
        else:
            value = found[(out[1], _HASH_FUNCTION[kind])]
            columns[f"_o{i}"] = pc.fill_null(value, 0) if kind == "count" else value
    for key in spec.order:
        if not key.column.startswith("_o"):
            raise ValueError(f"a grouped merge sorts by outputs only, not {key.column}")
    return pa.table(columns)


def _positions(rows: pa.ChunkedArray) -> tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Groups, and for every partial row in group order its group and its row position."""
    lists = rows.combine_chunks()
    sizes = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    where = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), np.int64)
    return len(lists), np.repeat(np.arange(len(lists), dtype=np.int64), sizes), where


@dataclass
class _Ranked:
    """Each group's values in order with their row counts (NULLs dropped): the k-th value
    of group g is `values[searchsorted(cumulative, base[g] + k, "right")]`."""

    values: npt.NDArray[Any]
    cumulative: npt.NDArray[np.int64]
    base: npt.NDArray[np.int64]
    total: npt.NDArray[np.int64]
    type: pa.DataType

    def at(self, k: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The k[g]-th value of each group g (any value where a group has none)."""
        if not len(self.values):
            return np.zeros(len(self.total), self.values.dtype)
        found = np.searchsorted(self.cumulative, self.base + k, side="right")
        return self.values[np.minimum(found, len(self.values) - 1)]


def _total_order(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sort keys of `values` in the engine's order: floats as integers that order -0.0
    before 0.0 (IEEE total order, as the engine compares them), other values as they are."""
    if values.dtype.kind != "f":
        return values
    bits = values.itemsize * 8
    signed: npt.NDArray[np.signedinteger[Any]] = values.view(np.int64 if bits == 64 else np.int32)
    magnitude = (1 << (bits - 1)) - 1
    flipped: npt.NDArray[Any] = signed ^ ((signed >> (bits - 1)) & magnitude)
    return flipped


def _ranked(value: str, weight: str, partials: pa.Table, rows: pa.ChunkedArray) -> _Ranked:
    groups, gid, where = _positions(rows)
    column = partials.column(value).combine_chunks()
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)[where]
    counts = np.asarray(pc.fill_null(partials.column(weight), 0).to_numpy(), np.int64)[where]
    values = np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False))[where]
    gid, counts, values = gid[valid], counts[valid], values[valid]
    by_value = np.argsort(_total_order(values))
    narrow = gid[by_value].astype(np.uint16) if groups <= 1 << 16 else gid[by_value]
    order = by_value[np.argsort(narrow, kind="stable")]  # uint16: a radix sort
    gid, counts, values = gid[order], counts[order], values[order]
    total = np.bincount(gid, weights=counts, minlength=groups).astype(np.int64)
    base = np.concatenate([[0], np.cumsum(total)[:-1]]).astype(np.int64)
    return _Ranked(values, np.cumsum(counts), base, total, column.type)


def _median(value: str, weight: str, partials: pa.Table, rows: pa.ChunkedArray) -> pa.Array:
    """MEDIAN per group from per-worker (value, row count) partials, as the engine computes
    it: NULLs ignored; an even count averages the two middle values, in the value's type
    (integers exactly, truncated toward zero: the sum never overflows)."""
    ranked = _ranked(value, weight, partials, rows)
    present = ranked.total > 0
    safe = np.where(present, ranked.total, 1)
    a, b = ranked.at((safe - 1) // 2), ranked.at(safe // 2)
    if pa.types.is_floating(ranked.type):
        result = (a + b) / 2
    else:
        result = _integer_midpoint(a.astype(np.int64), b.astype(np.int64))
    return pa.array(result.astype(a.dtype), ranked.type, mask=~present)


def _integer_midpoint(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """(a + b) / 2 truncated toward zero, without forming a + b (it may not fit 64 bits)."""
    odd_a, odd_b = a & 1, b & 1
    floor = (a >> 1) + (b >> 1) + ((odd_a + odd_b) >> 1)
    result: npt.NDArray[np.int64] = floor + ((floor < 0) & (odd_a != odd_b))
    return result


INTERPOLATION_STEPS = 1_000_000
"""The engine interpolates with the fraction truncated to millionths (DataFusion's
`percentile_cont`: `lower + (upper - lower) * (floor(fraction * 1e6) / 1e6)`, in f64)."""


def _percentile(
    value: str, weight: str, fraction: float, partials: pa.Table, rows: pa.ChunkedArray
) -> pa.Array:
    """PERCENTILE_CONT(value, fraction) per group from per-worker (value, row count)
    partials, as the engine computes it: NULLs ignored; the values (integers as DOUBLE)
    at positions floor and ceil of fraction * (n - 1), interpolated in f64 with the
    fraction truncated to millionths; REAL stays REAL, everything else is DOUBLE."""
    ranked = _ranked(value, weight, partials, rows)
    present = ranked.total > 0
    index = fraction * (np.where(present, ranked.total, 1) - 1).astype(np.float64)
    low, high = np.floor(index), np.ceil(index)
    lower = ranked.at(low.astype(np.int64)).astype(np.float64)
    upper = ranked.at(high.astype(np.int64)).astype(np.float64)
    steps = np.trunc((index - low) * INTERPOLATION_STEPS) / INTERPOLATION_STEPS
    with np.errstate(invalid="ignore", over="ignore"):
        result = np.where(low == high, lower, lower + (upper - lower) * steps)
    typ = pa.float32() if pa.types.is_float32(ranked.type) else pa.float64()
    return pa.array(result.astype(typ.to_pandas_dtype()), typ, mask=~present)


_MOMENTS = ("var_samp", "var_pop", "stddev_samp", "stddev_pop")


def _moment(
    kind: str, names: tuple[str, ...], partials: pa.Table, rows: pa.ChunkedArray
) -> pa.Array:
    """VAR/STDDEV per group from per-worker (count, mean, var_pop) partials, combined with
    Chan et al.'s parallel formula: M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2), which
    never subtracts large sums (no cancellation). `rows` lists each group's partial rows."""
    groups, gid, where = _positions(rows)

    def values(name: str) -> npt.NDArray[np.float64]:
        column = pc.fill_null(partials.column(name).cast(pa.float64()), 0.0)
        found: npt.NDArray[np.float64] = np.asarray(column.to_numpy(), np.float64)[where]
        return found

    n, mean_i, var_i = values(names[0]), values(names[1]), values(names[2])
    mean_i = np.where(n > 0, mean_i, 0.0)
    total = np.bincount(gid, weights=n, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = np.bincount(gid, weights=n * mean_i, minlength=groups) / total
        spread = np.where(n > 0, n * np.square(mean_i - mean[gid]), 0.0)
        m2 = np.bincount(gid, weights=np.where(n > 0, var_i * n, 0.0), minlength=groups)
        m2 = m2 + np.bincount(gid, weights=spread, minlength=groups)
        samp = kind in ("var_samp", "stddev_samp")
        result = m2 / (total - 1) if samp else m2 / total
        if kind.startswith("stddev"):
            result = np.sqrt(result)
    missing = total <= (1 if samp else 0)
    return pa.array(result, pa.float64(), mask=missing)


def _sort_indices(
    table: pa.Table,
    order: tuple[SortKey, ...],
    outputs: tuple[tuple[str, ...], ...],
    grouped: bool,
    wanted: int | None,
) -> pa.Array | None:
    """Row order for ORDER BY with per-key NULL placement (a NULL flag sorts before each
    key), only the first `wanted` rows when given (a top-N selection, not a full sort);
    None when a floating-point key holds NaN (left to the engine's total order)."""
    work: dict[str, pa.ChunkedArray] = {}
    keys: list[tuple[str, str]] = []
    for n, key in enumerate(order):
        name = key.column
        if not grouped and name.startswith("_o"):
            name = outputs[int(name[2:])][1]
        column = table.column(name)
        if not _sortable(column.type) or _has_nan(column):
            return None
        flag = f"__null{n}"
        work[flag] = pc.is_null(column)
        if pa.types.is_floating(column.type):  # -0.0 before 0.0, as the engine orders them
            numbers = np.asarray(pc.fill_null(column, 0).to_numpy())
            work[f"__key{n}"] = pa.chunked_array([_total_order(numbers)])
        else:
            work[f"__key{n}"] = column
        keys.append((flag, "descending" if key.nulls_first else "ascending"))
        keys.append((f"__key{n}", "descending" if key.desc else "ascending"))
    keyed = pa.table(work)
    if wanted is not None and wanted < keyed.num_rows // 4:
        top = pc.select_k_unstable(keyed, k=wanted, sort_keys=keys)
        return top.take(pc.sort_indices(keyed.take(top), sort_keys=keys))
    return pc.sort_indices(keyed, sort_keys=keys)
