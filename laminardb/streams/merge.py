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
* A hop window `hop(ts, INTERVAL <slide>, INTERVAL <size>)` (size a multiple of slide,
  projected: the form the engine closes correctly) is merged the same way from panes
  `slide` wide; a window is emitted from the panes it covers, one row per group and pane,
  as the engine emits it (it also groups by the projected hop value, research §4.4).
* A HAVING is evaluated here after the merge, per window (having.py): its aggregates are
  computed as extra partials. Forms the engine itself gets wrong are refused with a reason.
* DISTINCT aggregates (over one argument) are merged from the distinct values: the partial
  stream also groups by the argument (combine.py).
* A stream without a window (`GROUP BY` other columns, or none) is cumulative natively: the
  same rewrite without the window gives each worker's running partials, merged by
  `cumulative.CumulativeMerger` (`MergePlan.cumulative`).
* `clock.SourceClock` (re-exported here) is the cluster watermark of one source.

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
from laminardb.streams.clock import (
    DEFAULT_DELAY_MS,
    MIN_WATERMARK,
    SourceClock,
    Step,
    epoch_ms,
    interval_ms,
    watermark_of,
)
from laminardb.streams.combine import Agg, combine, final, shared
from laminardb.streams.having import predicate, rewrite
from laminardb.streams.written import Written

__all__ = [  # the cluster clock lives in clock.py; re-exported for merged.py and the tests
    "DEFAULT_DELAY_MS",
    "MIN_WATERMARK",
    "SourceClock",
    "Step",
    "epoch_ms",
    "interval_ms",
    "watermark_of",
]

HIDDEN_PREFIX = "__ldb_merge_"
"""Name prefix of the workers' partial streams (never shown to users)."""
STALL_S = 5.0
"""A closed window whose partials stopped short of the expected row count for this long is
emitted anyway (logged): a safety net should the engine drop rows the clock kept."""
CYCLE_BUCKET_MS = 1000

_EMIT_CLOSE = re.compile(r"\bEMIT\s+(?:ON\s+WINDOW\s+CLOSE|FINAL)\s*;?\s*$", re.I | re.S)
_EMIT_ANY = re.compile(r"\bEMIT\b.*$", re.I | re.S)
_CREATE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?STREAM\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:\"[^\"]+\"|[\w.]+)\s+AS\s+(.*)$",
    re.I | re.S,
)
_AGGS: dict[type[exp.Expression], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Min: "min",
    exp.Max: "max",
    exp.Avg: "avg",
}


def hidden_name(stream: str) -> str:
    return f"{HIDDEN_PREFIX}{stream}"


def is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIX)


# -- plan ---------------------------------------------------------------------------------------


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
    slide_ms: int
    """The window's slide: its size for tumble; a hop window is merged from panes this wide."""
    groups: int
    aggs: tuple[Agg, ...]
    outputs: tuple[Output, ...]
    projected_window: bool
    filtered: bool
    partial_sql: str
    having: exp.Expression | None = None
    """HAVING over the merged columns (`__g<i>`, `__f<i>`), applied per window after the merge."""
    cumulative: bool = False
    """No window: each worker emits its full current partials every cycle (cumulative.py)."""

    @property
    def window_columns(self) -> bool:
        """The engine prepends window_start/window_end (a projected window, without HAVING)."""
        return self.projected_window and self.having is None

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
    try:
        tree = sqlglot.parse_one(select_sql, read=SQLGLOT_DIALECT)
    except sqlglot.errors.SqlglotError:
        return "its SQL could not be analysed"
    if not isinstance(tree, exp.Select) or sum(1 for _ in tree.find_all(exp.Select)) > 1:
        return "it is not a single SELECT"
    for clause in ("joins", "distinct", "limit", "offset", "order"):
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
    windows = [i for i in items if _window_fn(i)]
    cumulative = not windows and not any(_window_fn(n) for n in tree.find_all(exp.Anonymous))
    if cumulative and closes:
        return "EMIT ON WINDOW CLOSE / EMIT FINAL without a window is not merged across workers"
    if cumulative and _repeats_an_aggregate(tree):
        return "it repeats an aggregate (natively such a stream emits each cycle's rows)"
    if cumulative and tree.args.get("having") is not None:
        # natively HAVING in a non-windowed stream filters each cycle's rows, not the totals
        return "HAVING in a stream without a window is not merged across workers"
    if not cumulative and not closes:
        return "only EMIT ON WINDOW CLOSE / EMIT FINAL windows are merged across workers"
    if cumulative:
        time_column, size_ms, slide_ms = "", 0, 0
        window: exp.Expression | None = None
    elif len(windows) != 1:
        return (
            "it does not group by exactly one tumble(<column>, INTERVAL ...) or "
            "hop(<column>, INTERVAL <slide>, INTERVAL <size>) window"
        )
    else:
        window = windows[0]
        time_column, found_size, found_slide = _window_args(window, relation)
        if found_size is None or found_slide is None:
            return (
                "its window must be tumble(<BIGINT column>, INTERVAL ...) or "
                f"hop(<BIGINT column>, INTERVAL <slide>, INTERVAL <size>): {window.sql()}"
            )
        size_ms, slide_ms = found_size, found_slide
        if size_ms % slide_ms:
            return f"its hop window's size is not a multiple of its slide: {window.sql()}"
    written = Written(select_sql)  # what the workers run is copied from the user's text
    group_items = [i for i in items if i is not window]
    group_sql = [i.sql(dialect=SQLGLOT_DIALECT) for i in group_items]  # to match items by
    group_text = [written.text(i) for i in group_items]
    where = tree.args.get("where")
    cond = written.text(where.this) if where is not None else None

    def wrap(arg: str) -> str:
        return f"CASE WHEN {cond} THEN {arg} END" if cond else arg

    partials: list[str] = []
    aggs: list[Agg] = []
    outputs: list[Output] = []
    projected = False

    distinct: list[str] = []  # the argument of the DISTINCT aggregates (one at most)
    distinct_text: list[str] = []  # the same as written

    def add_agg(node: exp.Expression, kind: str) -> int | str:
        """Index of a new aggregate computed as partials, or why it cannot be."""
        arg = node.this
        if isinstance(arg, exp.Distinct):
            values = arg.expressions
            text = values[0].sql(dialect=SQLGLOT_DIALECT) if len(values) == 1 else None
            if text is None or (distinct and distinct[0] != text):
                return "its DISTINCT aggregates are not all over one argument"
            distinct[:] = [text]
            distinct_text[:] = [written.text(values[0])]
            aggs.append(Agg(kind, (), distinct=True))
            return len(aggs) - 1
        star = isinstance(arg, exp.Star)
        arg_sql = "1" if star else written.text(arg)
        i = len(aggs)
        cols: tuple[str, ...]
        if kind == "avg":
            cols = (f"__a{i}s", f"__a{i}c")
            partials.extend(
                [f"SUM({wrap(arg_sql)}) AS {cols[0]}", f"COUNT({wrap(arg_sql)}) AS {cols[1]}"]
            )
        else:
            cols = (f"__a{i}",)
            body = "*" if star and not cond and kind == "count" else wrap(arg_sql)
            partials.append(f"{kind.upper()}({body}) AS {cols[0]}")
        aggs.append(Agg(kind, cols))
        return i

    for item in tree.expressions:
        node = item.unalias()
        kind = _agg_kind(node)
        if kind is not None:
            i = add_agg(node, kind)
            if isinstance(i, str):
                return i
            outputs.append(Output("agg", i))
        elif _window_fn(node):
            if _window_args(node, relation) != (time_column, size_ms, slide_ms):
                return "it projects a different window than it groups by"
            projected = True
            outputs.append(Output("window"))
        else:
            text = node.sql(dialect=SQLGLOT_DIALECT)
            if text not in group_sql:
                return f"its output {item.sql()} is neither grouped nor a COUNT/SUM/MIN/MAX/AVG"
            outputs.append(Output("group", group_sql.index(text)))
    if window is not None and _window_fn(window) == "hop" and not projected:
        # the engine emits each pane once instead of every window (research §4.4)
        return "a hop window that is not projected is not merged across workers"
    having: exp.Expression | None = None
    if tree.args.get("having") is not None:
        if window is not None and _window_fn(window) == "hop":
            return "HAVING over a hop window is not merged (the engine's own results are wrong)"
        selected = {item.unalias().sql(dialect=SQLGLOT_DIALECT) for item in tree.expressions}
        aliases = {item.alias.lower() for item in tree.expressions if item.alias}
        rewritten = rewrite(
            tree.args["having"].this, group_sql, selected, aliases, add_agg, _agg_kind
        )
        if isinstance(rewritten, str):
            return rewritten
        having = rewritten
    keys = [f"{g} AS __g{i}" for i, g in enumerate(group_text)]
    keys += [f"{d} AS __d" for d in distinct_text]
    counts = ["COUNT(*) AS __n"] + ([f"COUNT(CASE WHEN {cond} THEN 1 END) AS __m"] if cond else [])
    source = tables[0].sql(dialect=SQLGLOT_DIALECT)
    if cumulative:  # each cycle, every worker emits its full current partials (research §4.6)
        by = [*group_text, *distinct_text]
        items, aggs = shared([*keys, *counts, *partials], aggs)
        partial_sql = f"SELECT {', '.join(items)} FROM {source}" + (
            f" GROUP BY {', '.join(by)}" if by else ""
        )
    else:
        ts = exp.column(time_column, quoted=True).sql(dialect=SQLGLOT_DIALECT)
        bucket = f"{ts} - ({ts} % {slide_ms} + {slide_ms}) % {slide_ms}"  # floor: the pane
        cycle = f"TUMBLE({ts}, {CYCLE_BUCKET_MS})"
        partial_sql = (
            f"SELECT {', '.join([*keys, f'{bucket} AS __w', *counts, *partials])} FROM {source} "
            f"GROUP BY {', '.join([*group_text, *distinct_text, bucket, cycle])}"
        )
    return MergePlan(
        stream=stream,
        source=relation.name,
        time_column=time_column,
        size_ms=size_ms,
        slide_ms=slide_ms,
        groups=len(group_sql),
        aggs=tuple(aggs),
        outputs=tuple(outputs),
        projected_window=projected,
        filtered=cond is not None,
        partial_sql=partial_sql,
        having=having,
        cumulative=cumulative,
    )


def _repeats_an_aggregate(tree: exp.Select) -> bool:
    """Whether the SELECT list holds one aggregate expression twice."""
    texts = [
        node.sql(dialect=SQLGLOT_DIALECT)
        for item in tree.expressions
        for node in item.find_all(*_AGGS)
    ]
    return len(texts) != len(set(texts))


def _agg_kind(node: exp.Expression) -> str | None:
    return _AGGS.get(type(node))


def _window_fn(node: exp.Expression) -> str | None:
    """The window function `node` calls ("tumble" or "hop"), None for anything else."""
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in ("tumble", "hop"):
        return str(node.this).lower()
    return None


def _window_args(node: exp.Expression, relation: Relation) -> tuple[str, int | None, int | None]:
    """(time column, size ms, slide ms) of `tumble(col, size)` / `hop(col, slide, size)` over a
    BIGINT column. (Native windows over a TIMESTAMP column emit nothing for rows of the
    column's declared type, so they are not merged.)"""
    args = node.expressions
    hop = _window_fn(node) == "hop"
    if (
        len(args) != (3 if hop else 2)
        or not isinstance(args[0], exp.Column)
        or not all(isinstance(a, exp.Interval) for a in args[1:])
    ):
        return "", None, None
    column = next((n for n in relation.schema.names if n.lower() == args[0].name.lower()), None)
    if column is None or relation.schema.field(column).type != pa.int64():
        return "", None, None
    sizes = [interval_ms(a.sql(dialect=SQLGLOT_DIALECT)) for a in args[1:]]
    if any(not size for size in sizes):
        return "", None, None
    slide, size = (sizes[0], sizes[1]) if hop else (sizes[0], sizes[0])
    return column, size, slide


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
        self._having = None if merge_plan.having is None else predicate(merge_plan.having)
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
        self.rows_in = 0
        """Partial rows received from the workers (their engines count them as emitted)."""
        self.batches_out = 0
        self.rows_out = 0
        """Batches and rows emitted to subscribers: what one instance's stream counts."""
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
                pane = self.plan.slide_ms
                starts, counts = np.unique(values - np.mod(values, pane), return_counts=True)
                for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
                    window = self._windows.setdefault(int(start), _Window())
                    window.expected += int(count)
                    window.touched = now
            if any_live:
                self.closable = max(self.closable, step_watermark)

    def count_unused(self, rows: int) -> None:
        """Partial rows received and not merged (a stream whose source has no watermark)."""
        with self._lock:
            self.rows_in += rows

    def add(self, partial: pa.Table, shard: int = 0) -> None:
        """One partial batch from a worker (`shard`: which one; windows do not need it)."""
        if partial.num_rows == 0:
            return
        now = time.monotonic()
        starts = partial.column("__w")
        with self._lock:
            self.rows_in += partial.num_rows
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
        """The rows of every window that can be emitted now (None when none), in window order.

        Partials are kept by pane (`slide_ms` wide; a tumble window is one pane). A window
        `[start, start + size)` is emitted once the clock passed its end and each of its panes
        holds every row expected; its panes that no later window covers are then dropped."""
        now = time.monotonic() if now is None else now
        size, slide = self.plan.size_ms, self.plan.slide_ms
        done: list[tuple[int, list[tuple[int, list[pa.Table]]]]] = []
        with self._lock:
            while self._windows:
                start = min(self._windows) - size + slide  # the first window with data
                if self._emitted != MIN_WATERMARK:
                    start = max(start, self._emitted + slide)
                if start + size > self.closable:
                    break
                panes = sorted(p for p in self._windows if p < start + size)
                if any(p in self._lost for p in panes):
                    self.lost += 1  # a pane is short since a worker restarted: not emitted
                else:
                    short = [
                        self._windows[p]
                        for p in panes
                        if self._windows[p].received < self._windows[p].expected
                    ]
                    if short:
                        if now - max(w.touched for w in short) < self.stall_s:
                            break
                        self.stalled += 1
                    done.append((start, [(p, list(self._windows[p].parts)) for p in panes]))
                self._emitted = start
                for p in panes:
                    if p <= start:  # no later window covers it
                        del self._windows[p]
                        self._lost.discard(p)
        if not done:
            return None
        tables = [self._finish(start, panes) for start, panes in done]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return None
        out = pa.concat_tables(tables)
        with self._lock:
            self.batches_out += 1
            self.rows_out += out.num_rows
        return out

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

    def _finish(self, start: int, panes: list[tuple[int, list[pa.Table]]]) -> pa.Table:
        """The rows of window `start`: one per group and pane, as the engine emits them (it
        groups a hop window's rows also by the projected hop value, the first window start
        of the row's pane; for tumble, that is the window's start)."""
        tables = [self._finish_pane(start, pane, parts) for pane, parts in panes]
        tables = [t for t in tables if t is not None]
        return pa.concat_tables(tables) if tables else self._empty()

    def _finish_pane(self, start: int, pane: int, parts: list[pa.Table]) -> pa.Table | None:
        plan = self.plan
        merged = combine(plan.aggs, plan.groups, plan.filtered, parts)
        if merged is not None and self._having is not None:
            for i, agg in enumerate(self.plan.aggs):
                merged = merged.append_column(f"__f{i}", final(agg, merged))
            merged = merged.filter(self._having)
        if merged is None or merged.num_rows == 0:
            return None
        n = merged.num_rows
        columns: list[pa.Array | pa.ChunkedArray] = []
        names: list[str] = []
        if self.plan.window_columns:
            columns += [
                pa.array([start] * n, pa.int64()),
                pa.array([start + self.plan.size_ms] * n, pa.int64()),
            ]
            names += ["window_start", "window_end"]
        hop_value = pane - self.plan.size_ms + self.plan.slide_ms
        for out, target in zip(self.plan.outputs, self.schema, strict=True):
            if out.kind == "group":
                column = merged.column(f"__g{out.index}")
            elif out.kind == "window":
                column = pa.array([hop_value] * n, pa.int64()).cast(pa.timestamp("ms"))
            else:
                column = final(self.plan.aggs[out.index], merged)
            columns.append(column.cast(target.type))
            names.append(target.name)
        return pa.table(columns, names=names)

    @property
    def output_schema(self) -> pa.Schema:
        """The stream's batches' schema (the engine prepends the window when it is projected)."""
        fields = list(self.schema)
        if self.plan.window_columns:
            fields = [
                pa.field("window_start", pa.int64()),
                pa.field("window_end", pa.int64()),
                *fields,
            ]
        return pa.schema(fields)

    def _empty(self) -> pa.Table:
        return self.output_schema.empty_table()
