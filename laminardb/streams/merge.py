"""Cross-worker merging of windowed aggregates: the plan (SQL rewrite) and the per-window state.

A stream such as `SELECT device, tumble(ts, INTERVAL '5' SECOND) AS ws, COUNT(*), AVG(v) FROM
ev GROUP BY device, tumble(...) EMIT ON WINDOW CLOSE` over a source whose rows of one group are
spread over several workers cannot be served by uniting the workers' outputs. Instead:

* `plan` rewrites it into a hidden *partial* stream that every worker runs over its shard:
  per cycle, per group and per window bucket, the partial states (COUNT, SUM, MIN, MAX; AVG
  as SUM + COUNT), a row count `__n` of every row the engine accepted (not late) and, when
  the stream has a WHERE, a count `__m` of the rows that pass it (the WHERE is folded into
  the aggregates as CASE WHEN, so `__n` still counts every accepted row). The native engine
  emits such per-cycle partials, not cumulative ones, when the windowing function is the
  integer `TUMBLE(ts, 1000)` and is not projected (research §4.4), and it emits them on every
  cycle: no worker has to close a window, so an idle worker holds nothing open.
* `WindowMerger` collects the partials by window and emits a window (one row per group, with
  the stream's own columns and types) once the coordinator's cluster watermark has passed its
  end (as of an insert call with rows that were not late: one native instance closes windows
  only on a cycle that carries data) and the partials account for every accepted row the
  coordinator sent into that window (`expect`), so no worker's contribution is missing.
* `SourceClock` is the cluster watermark of one source, computed the way one native instance
  computes it from the same insert calls (max event time minus the declared delay, raised by
  each call *before* its late rows are dropped), and tells the caller when buffered rows must
  be shipped, or a watermark set on the workers, so that each worker drops exactly the rows
  that one instance drops.

Everything here is pure logic over Arrow tables, testable without processes.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan.statements import SQLGLOT_DIALECT

MIN_WATERMARK = -(2**63)
HIDDEN_PREFIX = "__ldb_merge_"
"""Name prefix of the workers' partial streams (never shown to users)."""
STALL_S = 5.0
"""A closed window whose partials stopped short of the expected row count for this long is
emitted anyway (logged): a safety net should the engine drop rows the clock kept."""
CYCLE_BUCKET_MS = 1000
DEFAULT_DELAY_MS = 1000
"""The native engine honours only INTERVAL delays; any other WATERMARK form acts as 1 s."""

_EMIT_CLOSE = re.compile(r"\bEMIT\s+(?:ON\s+WINDOW\s+CLOSE|FINAL)\s*;?\s*$", re.I | re.S)
_EMIT_ANY = re.compile(r"\bEMIT\b.*$", re.I | re.S)
_CREATE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?STREAM\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:\"[^\"]+\"|[\w.]+)\s+AS\s+(.*)$",
    re.I | re.S,
)
_WATERMARK = re.compile(
    r"WATERMARK\s+FOR\s+(\"[^\"]+\"|\w+)(?:\s+AS\s+([^,)]*(?:\([^)]*\))?[^,)]*))?", re.I
)
_INTERVAL = re.compile(r"INTERVAL\s+'\s*(\d+)\s*([a-z]*)\s*'\s*([a-z]*)", re.I)
_UNIT_MS = {
    "millisecond": 1,
    "milliseconds": 1,
    "ms": 1,
    "second": 1000,
    "seconds": 1000,
    "s": 1000,
    "minute": 60_000,
    "minutes": 60_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_AGGS = {exp.Count: "count", exp.Sum: "sum", exp.Min: "min", exp.Max: "max", exp.Avg: "avg"}


def hidden_name(stream: str) -> str:
    return f"{HIDDEN_PREFIX}{stream}"


def is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


# -- plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agg:
    """One aggregate of the stream: `kind` and the partial columns that carry its state."""

    kind: str  # count | sum | min | max | avg
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Output:
    """One output column: a group column (`index` into groups), the window, or an aggregate."""

    kind: str  # group | window | agg
    index: int = 0


@dataclass(frozen=True)
class MergePlan:
    """How the workers compute partials of stream `stream` and how they are merged."""

    stream: str
    source: str
    time_column: str
    size_ms: int
    groups: int
    aggs: tuple[Agg, ...]
    outputs: tuple[Output, ...]
    projected_window: bool
    filtered: bool
    partial_sql: str

    @property
    def hidden(self) -> str:
        return hidden_name(self.stream)


def select_of(create_sql: str) -> tuple[str, bool] | None:
    """The SELECT of a CREATE STREAM and whether it closes windows (EMIT ON WINDOW CLOSE/FINAL)."""
    match = _CREATE.match(create_sql.strip())
    if match is None:
        return None
    body = match.group(1).strip().rstrip(";")
    closes = _EMIT_CLOSE.search(body) is not None
    return _EMIT_ANY.sub("", body).strip(), closes


def plan(stream: str, create_sql: str, catalog: Catalog) -> MergePlan | str:
    """The merge plan of a CREATE STREAM statement, or why it cannot be merged (a phrase)."""
    parsed = select_of(create_sql)
    if parsed is None:
        return "its statement could not be read"
    select_sql, closes = parsed
    if not closes:
        return "only EMIT ON WINDOW CLOSE / EMIT FINAL windows are merged across workers"
    try:
        tree = sqlglot.parse_one(select_sql, read=SQLGLOT_DIALECT)
    except sqlglot.errors.SqlglotError:
        return "its SQL could not be analysed"
    if not isinstance(tree, exp.Select) or sum(1 for _ in tree.find_all(exp.Select)) > 1:
        return "it is not a single SELECT"
    for clause in ("joins", "having", "distinct", "limit", "offset", "order"):
        if tree.args.get(clause):
            return f"its {clause.upper()} clause is not merged across workers"
    if tree.find(exp.Window):
        return "window functions (OVER) are not merged across workers"
    tables = list(tree.find_all(exp.Table))
    relation = catalog.get(tables[0].name) if len(tables) == 1 else None
    if relation is None or relation.kind != "source":
        return "it does not read exactly one source"
    group = tree.args.get("group")
    items = list(group.expressions) if group is not None else []
    windows = [i for i in items if _is_tumble(i)]
    if len(windows) != 1:
        return "it does not group by exactly one tumble(<column>, INTERVAL ...) window"
    window = windows[0]
    time_column, size_ms = _tumble_args(window, relation)
    if size_ms is None:
        return f"its window must be tumble(<BIGINT column>, INTERVAL ...): {window.sql()}"
    group_items = [i for i in items if i is not window]
    group_sql = [i.sql(dialect=SQLGLOT_DIALECT) for i in group_items]
    where = tree.args.get("where")
    cond = where.this.sql(dialect=SQLGLOT_DIALECT) if where is not None else None

    def wrap(arg: str) -> str:
        return f"CASE WHEN {cond} THEN {arg} END" if cond else arg

    partials: list[str] = []
    aggs: list[Agg] = []
    outputs: list[Output] = []
    projected = False
    for item in tree.expressions:
        node = item.unalias()
        kind = next((k for cls, k in _AGGS.items() if type(node) is cls), None)
        if kind is not None:
            arg = node.this
            if isinstance(arg, exp.Distinct):
                return f"{node.sql()} (DISTINCT) is not merged across workers"
            star = isinstance(arg, exp.Star)
            arg_sql = "1" if star else arg.sql(dialect=SQLGLOT_DIALECT)
            i = len(aggs)
            cols: tuple[str, ...]
            if kind == "avg":
                cols = (f"__a{i}s", f"__a{i}c")
                partials += [
                    f"SUM({wrap(arg_sql)}) AS {cols[0]}",
                    f"COUNT({wrap(arg_sql)}) AS {cols[1]}",
                ]
            else:
                cols = (f"__a{i}",)
                fn = kind.upper()
                body = "*" if star and not cond and kind == "count" else wrap(arg_sql)
                partials.append(f"{fn}({body}) AS {cols[0]}")
            aggs.append(Agg(kind, cols))
            outputs.append(Output("agg", i))
        elif _is_tumble(node):
            if _tumble_args(node, relation) != (time_column, size_ms):
                return "it projects a different window than it groups by"
            projected = True
            outputs.append(Output("window"))
        else:
            text = node.sql(dialect=SQLGLOT_DIALECT)
            if text not in group_sql:
                return f"its output {item.sql()} is neither grouped nor a COUNT/SUM/MIN/MAX/AVG"
            outputs.append(Output("group", group_sql.index(text)))
    ts = exp.column(time_column, quoted=True).sql(dialect=SQLGLOT_DIALECT)
    bucket = f"{ts} - ({ts} % {size_ms} + {size_ms}) % {size_ms}"  # floor, as tumble
    keys = [f"{g} AS __g{i}" for i, g in enumerate(group_sql)]
    counts = ["COUNT(*) AS __n"] + ([f"COUNT(CASE WHEN {cond} THEN 1 END) AS __m"] if cond else [])
    source = tables[0].sql(dialect=SQLGLOT_DIALECT)
    partial_sql = (
        f"SELECT {', '.join([*keys, f'{bucket} AS __w', *counts, *partials])} FROM {source} "
        f"GROUP BY {', '.join([*group_sql, bucket, f'TUMBLE({ts}, {CYCLE_BUCKET_MS})'])}"
    )
    return MergePlan(
        stream=stream,
        source=relation.name,
        time_column=time_column,
        size_ms=size_ms,
        groups=len(group_sql),
        aggs=tuple(aggs),
        outputs=tuple(outputs),
        projected_window=projected,
        filtered=cond is not None,
        partial_sql=partial_sql,
    )


def _is_tumble(node: exp.Expression) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).lower() == "tumble"


def _tumble_args(node: exp.Expression, relation: Relation) -> tuple[str, int | None]:
    args = node.expressions
    if (
        len(args) != 2
        or not isinstance(args[0], exp.Column)
        or not isinstance(args[1], exp.Interval)
    ):
        return "", None
    column = next((n for n in relation.schema.names if n.lower() == args[0].name.lower()), None)
    if column is None or relation.schema.field(column).type != pa.int64():
        return "", None
    return column, interval_ms(args[1].sql(dialect=SQLGLOT_DIALECT))


def interval_ms(text: str) -> int | None:
    """Milliseconds of an `INTERVAL '5' SECOND` / `INTERVAL '5 SECOND'` literal, None if not one."""
    match = _INTERVAL.search(text)
    if match is None:
        return None
    unit = (match.group(2) or match.group(3) or "").lower()
    factor = _UNIT_MS.get(unit)
    return None if factor is None else int(match.group(1)) * factor


def watermark_of(relation: Relation) -> tuple[str, int] | None:
    """(column, delay ms) of a source's WATERMARK clause as the engine honours it, or None."""
    match = _WATERMARK.search(relation.create_sql)
    if match is None:
        return None
    name = match.group(1).strip('"')
    column = next((n for n in relation.schema.names if n.lower() == name.lower()), name)
    delay = interval_ms(match.group(2) or "") if match.group(2) else None
    return column, DEFAULT_DELAY_MS if delay is None else delay


# -- the cluster watermark of one source ---------------------------------------------------------


@dataclass
class Step:
    """What one insert call does to its source's watermark, and what the caller must do."""

    watermark: int
    live: pa.Array | None
    """The call's rows that are not late (a boolean mask), None when all are."""
    flush_before: bool
    """Ship what is buffered first: coalesced with this call, some of it would be dropped."""
    set_watermark: bool
    """The call has late rows: set `watermark` on every worker before shipping it (alone)."""
    any_live: bool


@dataclass
class SourceClock:
    """One source's watermark as one native instance computes it over the same insert calls."""

    column: str
    delay_ms: int
    watermark: int = MIN_WATERMARK
    buffered_min: int | None = None

    def observe(self, table: pa.Table, buffered: bool) -> Step:
        """Account for an insert call of `table`; `buffered`: rows of this source wait unsent."""
        if not buffered:
            self.buffered_min = None
        ts = table.column(self.column)
        bounds = pc.min_max(ts)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if high is None:
            return Step(self.watermark, None, False, False, False)
        mark = max(self.watermark, int(high) - self.delay_ms)
        self.watermark = mark
        late = int(low) < mark
        flush_before = self.buffered_min is not None and (late or self.buffered_min < mark)
        if late:
            live = pc.fill_null(pc.greater_equal(ts, mark), False)
            self.buffered_min = None
            return Step(mark, live, flush_before, True, bool(pc.any(live).as_py()))
        self.buffered_min = (
            int(low)
            if flush_before or self.buffered_min is None
            else min(self.buffered_min, int(low))
        )
        return Step(mark, None, flush_before, False, True)


# -- merging ------------------------------------------------------------------------------------


@dataclass
class _Window:
    expected: int = 0
    received: int = 0
    parts: list[pa.Table] = field(default_factory=list)
    touched: float = 0.0


class WindowMerger:
    """Partials of one merged stream by window; emits whole windows, in window order.

    `schema` is the stream's output schema without the `window_start`/`window_end` columns
    that the engine prepends when the window is projected. Thread-safe: the receiver thread
    adds partials while inserting threads add expectations.
    """

    def __init__(self, merge_plan: MergePlan, schema: pa.Schema, stall_s: float = STALL_S):
        self.plan = merge_plan
        self.schema = schema
        self.stall_s = stall_s
        self.closable = MIN_WATERMARK
        self.stalled = 0
        self.dropped = 0
        """Partial rows that arrived for a window already emitted (after a stall): dropped."""
        self._emitted = MIN_WATERMARK  # start of the last window emitted (they go in order)
        self._windows: dict[int, _Window] = {}
        self._lost: set[int] = set()  # open when a worker restarted: never emitted
        self.lost = 0
        """Windows dropped because a worker restarted while they were open (see `lose_open`)."""
        self._lock = threading.Lock()
        self.emit_lock = threading.Lock()
        """Held by callers from `ready` until they have delivered its result (keeps order)."""

    def expect(
        self, table: pa.Table, live: pa.Array | None, step_watermark: int, any_live: bool
    ) -> None:
        """Rows of one insert call that the engines keep (`live` mask or all), and the watermark
        after it; windows ending at or before that watermark become closable when the call
        carried live rows (native closes windows only on a cycle with data)."""
        ts = table.column(self.plan.time_column)
        if live is not None:
            ts = ts.filter(live)
        values = ts.drop_null().to_numpy() if ts.null_count else ts.to_numpy()
        now = time.monotonic()
        with self._lock:
            if len(values):
                size = self.plan.size_ms
                starts, counts = np.unique(values - np.mod(values, size), return_counts=True)
                for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
                    window = self._windows.setdefault(int(start), _Window())
                    window.expected += int(count)
                    window.touched = now
            if any_live:
                self.closable = max(self.closable, step_watermark)

    def add(self, partial: pa.Table) -> None:
        """One partial batch from a worker."""
        if partial.num_rows == 0:
            return
        now = time.monotonic()
        starts = partial.column("__w")
        with self._lock:
            for start in pc.unique(starts).to_pylist():
                if start is None:
                    continue
                part = partial.filter(pc.equal(starts, start))
                if start <= self._emitted or start in self._lost:
                    self.dropped += part.num_rows
                    continue
                window = self._windows.setdefault(int(start), _Window())
                window.parts.append(part)
                window.received += int(pc.sum(part.column("__n")).as_py() or 0)
                window.touched = now

    def ready(self, now: float | None = None) -> pa.Table | None:
        """The rows of every window that can be emitted now (None when none), in window order."""
        now = time.monotonic() if now is None else now
        done: list[tuple[int, list[pa.Table]]] = []
        with self._lock:
            for start in sorted(self._windows):
                window = self._windows[start]
                if start + self.plan.size_ms > self.closable:
                    break
                if start in self._lost:
                    del self._windows[start]
                    self._lost.discard(start)
                    self._emitted = start
                    self.lost += 1
                    continue
                if window.received < window.expected:
                    if now - window.touched < self.stall_s:
                        break
                    self.stalled += 1
                done.append((start, window.parts))
                del self._windows[start]
                self._emitted = start
        if not done:
            return None
        tables = [self._finish(start, parts) for start, parts in done]
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables) if tables else None

    def lose_open(self) -> list[int]:
        """A worker restarted: the partials it had not sent are gone, so every window open now
        would come out short. They are dropped when they close instead of emitted (the
        subscribers of the moment are told); windows opened later are exact again."""
        with self._lock:
            self._lost.update(self._windows)
            return sorted(self._lost)

    @property
    def open_windows(self) -> int:
        with self._lock:
            return len(self._windows)

    def _finish(self, start: int, parts: list[pa.Table]) -> pa.Table:
        merged = _merge(self.plan, parts)
        if merged is None:
            return self._empty()
        n = merged.num_rows
        columns: list[pa.Array | pa.ChunkedArray] = []
        names: list[str] = []
        if self.plan.projected_window:
            columns += [
                pa.array([start] * n, pa.int64()),
                pa.array([start + self.plan.size_ms] * n, pa.int64()),
            ]
            names += ["window_start", "window_end"]
        for out, target in zip(self.plan.outputs, self.schema, strict=True):
            if out.kind == "group":
                column = merged.column(f"__g{out.index}")
            elif out.kind == "window":
                column = pa.array([start] * n, pa.int64()).cast(pa.timestamp("ms"))
            else:
                column = _final(self.plan.aggs[out.index], merged)
            columns.append(column.cast(target.type))
            names.append(target.name)
        return pa.table(columns, names=names)

    @property
    def output_schema(self) -> pa.Schema:
        """The stream's batches' schema (the engine prepends the window when it is projected)."""
        fields = list(self.schema)
        if self.plan.projected_window:
            fields = [
                pa.field("window_start", pa.int64()),
                pa.field("window_end", pa.int64()),
                *fields,
            ]
        return pa.schema(fields)

    def _empty(self) -> pa.Table:
        return self.output_schema.empty_table()


def _merge(merge_plan: MergePlan, parts: list[pa.Table]) -> pa.Table | None:
    """Partials of one window grouped by the stream's groups, states combined; None if empty."""
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="permissive")
    keys = [f"__g{i}" for i in range(merge_plan.groups)]
    specs: list[tuple[str, str, pc.ScalarAggregateOptions]] = []
    keep = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)
    count_column = "__m" if merge_plan.filtered else "__n"
    specs.append((count_column, "sum", keep))
    for agg in merge_plan.aggs:
        how = {"count": "sum", "sum": "sum", "avg": "sum", "min": "min", "max": "max"}[agg.kind]
        specs.append((agg.columns[0], how, keep))
        if agg.kind == "avg":
            specs.append((agg.columns[1], "sum", keep))
    if keys:
        grouped = table.group_by(keys, use_threads=False).aggregate(
            [(c, how, opts) for c, how, opts in specs]
        )
        rename = {f"{c}_{how}": c for c, how, _ in specs}
        grouped = grouped.rename_columns([rename.get(n, n) for n in grouped.column_names])
    else:
        grouped = pa.table(
            {c: [getattr(pc, how)(table.column(c), options=opts).as_py()] for c, how, opts in specs}
        )
        for c, _, _ in specs:
            grouped = grouped.set_column(
                grouped.column_names.index(c), c, grouped.column(c).cast(table.schema.field(c).type)
            )
    alive = pc.fill_null(pc.greater(grouped.column(count_column), 0), False)
    grouped = grouped.filter(alive)
    return grouped if grouped.num_rows else None


def _final(agg: Agg, merged: pa.Table) -> pa.ChunkedArray | pa.Array:
    column = merged.column(agg.columns[0])
    if agg.kind == "count":
        return pc.fill_null(column, 0)
    if agg.kind == "avg":
        count = merged.column(agg.columns[1])
        total = column.cast(pa.float64())
        zero = pc.fill_null(pc.equal(count, 0), True)
        return pc.if_else(
            zero,
            pa.scalar(None, pa.float64()),
            pc.divide(total, pc.fill_null(count, 1).cast(pa.float64())),
        )
    return column
