"""Rule 3 of `split`, the two-phase aggregate: partial aggregates per worker, and a merge
that groups the partials again and evaluates the rest of the query over them.

Pure logic, like `split`: the query's text spans are rewritten over the partial columns
(`_kN` group keys, `_aN` partial aggregates, `_d0` a distinct argument); `fastmerge` gets an
in-process form of the merge when it is simple, `moments` the VAR/STDDEV/MEDIAN values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from laminardb.cluster.catalog import quote
from laminardb.plan import moments
from laminardb.plan.fastmerge import RANK_KINDS, SortKey, Spec
from laminardb.plan.layout import (
    NoPlan,
    Query,
    Span,
    TokenKey,
    aliases_of,
    columns_in,
    group_keys,
    name_of,
    node_span,
    order_target,
    shadowing,
    suffix_span,
    token_key,
)
from laminardb.plan.plans import PARTIALS, Plan, Rule, limits
from laminardb.plan.tokens import tokenize

_SCALAR_FUNCTIONS = frozenset({"arrow_typeof"})
"""Functions sqlglot does not know that may run over merged aggregates: they are scalar, and
every merged aggregate has its native type (`distributed` refuses decimal partials)."""
_MERGE_OF: dict[type[exp.Expr], str] = {
    exp.Sum: "SUM",
    exp.Min: "MIN",
    exp.Max: "MAX",
    exp.LogicalAnd: "BOOL_AND",
    exp.LogicalOr: "BOOL_OR",
}
"""Aggregates whose merge is the same aggregate over the partials."""
_FAST_KIND: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Min: "min",
    exp.Max: "max",
    exp.LogicalAnd: "bool_and",
    exp.LogicalOr: "bool_or",
}
"""Aggregates the in-process merge (`fastmerge`) computes, by its name for them."""
_VARIANCE: dict[type[exp.Expr], str] = {
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
}
"""Second-moment aggregates: per-worker count, mean and var_pop, merged in process
(`fastmerge`, Chan's parallel formula)."""
_WEIGHT: TokenKey = (("ldb", "median weight"),)
"""The partial key of the per-(group, value) row count MEDIAN is merged with."""
_REFUSED_IN_MERGE: tuple[type[exp.Expr], ...] = (
    exp.Anonymous,
    exp.Filter,
    exp.IgnoreNulls,
    exp.RespectNulls,
    exp.WithinGroup,
    exp.Star,
    exp.Distinct,
)


@dataclass
class _TwoPhase:
    """State of the two-phase rewrite: group keys and partial aggregates for the workers."""

    query: Query
    keys: list[TokenKey] = field(default_factory=list)
    partials: dict[TokenKey, tuple[str, str]] = field(default_factory=dict)
    sql_merge: bool = True
    """False when an aggregate has no SQL merge (VAR/STDDEV: only `fastmerge` merges them)."""
    moments: dict[TokenKey, tuple[str, ...]] = field(default_factory=dict)
    """Aggregates `fastmerge` merges by kind: VAR/STDDEV (kind, count, mean, var_pop
    partial columns), MEDIAN (kind, value, weight), PERCENTILE_CONT (kind, value, weight,
    fraction), distinct counts (kind, value)."""
    distinct: tuple[TokenKey, str] | None = None
    """The argument of COUNT(DISTINCT x) / APPROX_DISTINCT(x) (its key and text): workers
    then also group by it (one row per distinct (group, x) value), and the merge counts."""

    true_filters: dict[str, str] = field(default_factory=dict)
    """Partial column -> its `agg FILTER (WHERE (c) IS TRUE)` form. Native's grouped FILTER
    counts rows whose condition is NULL, its ungrouped one does not: an ungrouped query whose
    workers group by a distinct argument takes these forms to keep the ungrouped answer."""

    def partial(self, key: TokenKey, sql: str) -> str:
        """Quoted column name of the partial aggregate `sql` (one per distinct key)."""
        if key not in self.partials:
            self.partials[key] = (f"_a{len(self.partials)}", sql)
        return quote(self.partials[key][0])


def _merged(state: _TwoPhase, node: exp.Expr, span: Span, *, having: bool = False) -> str:
    """The text at `span` (expression `node`) rewritten over the partials: group keys become
    `_kN` columns, aggregates their merge over `_aN` partial columns."""
    query = state.query
    edits: list[tuple[int, int, str]] = []

    def visit(n: exp.Expr, at: Span | None) -> None:
        if at is not None:
            key = token_key(query, at)
            if key in state.keys:
                edits.append((at[0], at[1], quote(f"_k{state.keys.index(key)}")))
                return
        if isinstance(n, exp.Filter) and isinstance(n.this, exp.AggFunc):
            inner = node_span(query, n.this)
            whole = None if inner is None else suffix_span(query, inner, "FILTER")
            if whole is None:
                raise NoPlan("FILTER without position")
            edits.append((whole[0], whole[1], _filtered(state, n.this, whole)))
            return
        if isinstance(n, exp.AggFunc):
            if at is None:
                raise NoPlan("aggregate without position")
            edits.append((at[0], at[1], _aggregate(state, n, at)))
            return
        if isinstance(n, exp.WithinGroup) and isinstance(n.this, exp.PercentileCont):
            if at is None:
                raise NoPlan("WITHIN GROUP without position")
            edits.append((at[0], at[1], _percentile_within(state, n, at)))
            return
        if isinstance(n, exp.Column):
            name = name_of(n.this)
            found = aliases_of(query).get(name, [])
            if having and at is not None and name not in query.columns and len(found) == 1:
                item = query.items[found[0]]
                edits.append((at[0], at[1], f"({_merged(state, item.node, item.span)})"))
                return
            raise NoPlan(f"{name} is neither grouped nor aggregated")
        if isinstance(n, exp.Anonymous) and n.name.lower() in _SCALAR_FUNCTIONS:
            pass
        elif isinstance(n, _REFUSED_IN_MERGE):
            raise NoPlan(f"{type(n).__name__} over aggregates")
        for child in n.iter_expressions():
            visit(child, node_span(query, child))

    if having:
        _no_alias_references_in_having(query, node)
    visit(node, span)
    text = query.sql
    out: list[str] = []
    last = span[0]
    for start, end, replacement in sorted(edits):
        if start < last or end > span[1]:
            raise NoPlan("overlapping rewrites")
        out += [text[last:start], replacement]
        last = end
    out.append(text[last : span[1]])
    return "".join(out)


def _no_alias_references_in_having(query: Query, node: exp.Expr) -> None:
    """Refuse HAVING names that are both an input column and another item's alias."""
    for col in columns_in(node):
        name = name_of(col.this)
        if not col.args.get("table") and name in query.columns and shadowing(query, name):
            raise NoPlan(f"{name} names both a column and a select alias")


def _filtered(state: _TwoPhase, node: exp.AggFunc, span: Span) -> str:
    """Merge expression of `agg(x) FILTER (WHERE c)`: the workers compute it as written
    and it merges like the plain aggregate (COUNT, SUM, MIN, MAX, BOOL_AND, BOOL_OR)."""
    query = state.query
    extra = {k: v for k, v in node.args.items() if k not in ("this", "big_int") and v}
    if extra or isinstance(node.this, exp.Distinct) or node.this is None:
        raise NoPlan("filtered aggregate with more than one plain argument")
    key = token_key(query, span)
    partial = state.partial(key, query.text(span))
    state.true_filters[state.partials[key][0]] = _true_filter(query, node, span)
    if isinstance(node, exp.Count):
        return f"COALESCE(SUM({partial}), 0)"
    if type(node) in _MERGE_OF:
        return f"{_MERGE_OF[type(node)]}({partial})"
    raise NoPlan(f"{type(node).__name__} FILTER has no two-phase form yet")


def _true_filter(query: Query, node: exp.AggFunc, span: Span) -> str:
    """`agg(x) FILTER (WHERE c)` at `span` as `agg(x) FILTER (WHERE (c) IS TRUE)`."""
    call = node_span(query, node)
    if call is None:
        raise NoPlan("filtered aggregate without position")
    tail = query.text((call[1], span[1]))
    found = list(tokenize(tail))  # FILTER ( WHERE c )
    if len(found) < 5 or not found[2].is_word("WHERE") or not found[-1].is_punct(")"):
        raise NoPlan("FILTER without WHERE")
    condition = tail[found[2].end : found[-1].start].strip()
    return f"{query.text(call)} FILTER (WHERE ({condition}) IS TRUE)"


def _distinct_argument(state: _TwoPhase, node: exp.AggFunc, span: Span) -> str:
    """Register the argument of COUNT(DISTINCT x) / APPROX_DISTINCT(x) as the extra worker
    group key `_d0` (one such argument per query) and return its quoted name."""
    query = state.query
    first = query.index[span[0]] + 2  # name (
    if isinstance(node, exp.Count):
        if not query.toks[first].word("DISTINCT"):
            raise NoPlan("COUNT(DISTINCT) without DISTINCT token")
        first += 1
    if any(isinstance(n, exp.AggFunc | exp.Window) for n in _argument(node).walk()):
        raise NoPlan("aggregate inside a distinct count")
    _value_key(state, (query.toks[first].start, span[1] - 1))
    return quote("_d0")


def _value_key(state: _TwoPhase, inner: Span) -> None:
    """Make the expression at `inner` the extra worker group key `_d0` (one per query)."""
    query = state.query
    key = token_key(query, inner)
    if state.distinct is not None and state.distinct[0] != key:
        raise NoPlan("distinct values of more than one argument")
    state.distinct = (key, query.text(inner).strip())


def _argument(node: exp.AggFunc) -> exp.Expr:
    """The one argument of COUNT(DISTINCT x) or APPROX_DISTINCT(x)."""
    this = node.this
    if isinstance(this, exp.Distinct):
        if len(this.expressions) != 1 or not isinstance(this.expressions[0], exp.Expr):
            raise NoPlan("COUNT(DISTINCT) of several expressions")
        first: exp.Expr = this.expressions[0]
        return first
    if not isinstance(this, exp.Expr):
        raise NoPlan("no argument")
    return this


def _aggregate(state: _TwoPhase, node: exp.AggFunc, span: Span) -> str:
    """Merge expression of one aggregate call, registering its partials."""
    query = state.query
    extra = {k: v for k, v in node.args.items() if k not in ("this", "big_int") and v}
    distinct_count = isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct)
    if not extra and (distinct_count or isinstance(node, exp.ApproxDistinct)):
        _argument(node)
        name = _distinct_argument(state, node, span)
        state.moments[token_key(query, span)] = (
            ("count_distinct", "_d0") if distinct_count else ("approx_distinct", "_d0")
        )
        return f"COUNT(DISTINCT {name})" if distinct_count else f"APPROX_DISTINCT({name})"
    if isinstance(node, exp.Median) and not extra:
        if isinstance(node.this, exp.Distinct):
            raise NoPlan("MEDIAN(DISTINCT)")
        _argument(node)
        _distinct_argument(state, node, span)
        return _ranked(state, span, "median")
    if isinstance(node, exp.PercentileCont) and set(extra) == {"expression"}:
        return _percentile(state, node, span)
    if extra or isinstance(node.this, exp.Distinct) or node.this is None:
        raise NoPlan("aggregate with more than one plain argument")
    key = token_key(query, span)
    if isinstance(node, exp.Count):
        return f"COALESCE(SUM({state.partial(key, query.text(span))}), 0)"
    if type(node) in _MERGE_OF:
        return f"{_MERGE_OF[type(node)]}({state.partial(key, query.text(span))})"
    if type(node) in _VARIANCE:
        inner = (query.toks[query.index[span[0]] + 1].end, span[1] - 1)
        argument, arg_key = query.text(inner), token_key(query, inner)
        names = []
        for function in ("COUNT", "AVG", "VAR_POP"):
            state.partial(_call_key(function, arg_key), f"{function.lower()}({argument})")
            names.append(state.partials[_call_key(function, arg_key)][0])
        state.moments[key] = (_VARIANCE[type(node)], names[0], names[1], names[2])
        state.sql_merge = False
        return _moment_column(state, key)
    if isinstance(node, exp.Avg):
        inner = (query.toks[query.index[span[0]] + 1].end, span[1] - 1)
        argument, arg_key = query.text(inner), token_key(query, inner)
        count = state.partial(_call_key("COUNT", arg_key), f"count({argument})")
        if _is_float_column(query, node.this):
            total = state.partial(_call_key("SUM", arg_key), f"sum({argument})")
            return f"(SUM({total}) / CAST(SUM({count}) AS DOUBLE))"
        mean = state.partial(key, query.text(span))
        return f"(SUM({mean} * CAST({count} AS DOUBLE)) / CAST(SUM({count}) AS DOUBLE))"
    raise NoPlan(f"{type(node).__name__} has no two-phase form yet")


def _percentile(state: _TwoPhase, node: exp.PercentileCont, span: Span) -> str:
    """PERCENTILE_CONT(x, p): see `_ranked_at`."""
    fraction = _fraction(node.expression)
    if isinstance(node.this, exp.Column):
        return _ranked_at(state, node.this, fraction, span)
    if not isinstance(node.this, exp.Expr) or isinstance(node.this, exp.Distinct):
        raise NoPlan("PERCENTILE_CONT(DISTINCT)")
    if any(isinstance(n, exp.AggFunc | exp.Window) for n in node.this.walk()):
        raise NoPlan("aggregate inside PERCENTILE_CONT")
    return _ranked_at(state, _first_argument(state.query, span), fraction, span)


def _first_argument(query: Query, call: Span) -> Span:
    """The span of the first argument of the call at `call`: up to its first top-level comma."""
    depth = 0
    start = None
    for tok in query.toks[query.index[call[0]] + 1 :]:
        if tok.punct("([{"):
            depth += 1
            if depth == 1:
                start = tok.end
                continue
        elif tok.punct(")]}"):
            depth -= 1
        elif depth == 1 and tok.punct(",") and start is not None:
            return start, tok.start
        if tok.start >= call[1]:
            break
    raise NoPlan("PERCENTILE_CONT without its two arguments")


def _percentile_within(state: _TwoPhase, node: exp.WithinGroup, span: Span) -> str:
    """PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY column [DESC]): DESC ranks at 1 - p, as
    the engine does."""
    call, order = node.this, node.expression
    if not isinstance(call, exp.PercentileCont) or call.args.get("expression") is not None:
        raise NoPlan("WITHIN GROUP of anything but PERCENTILE_CONT(p)")
    ordered = order.expressions if isinstance(order, exp.Order) else []
    if len(ordered) != 1 or not isinstance(ordered[0], exp.Ordered):
        raise NoPlan("PERCENTILE_CONT WITHIN GROUP of several keys")
    fraction = _fraction(call.this)
    if ordered[0].args.get("desc"):
        fraction = 1.0 - fraction
    return _ranked_at(state, ordered[0].this, fraction, span)


def _fraction(literal: object) -> float:
    """PERCENTILE_CONT's literal fraction in [0, 1] (anything else is left to the gather
    path, which gives the engine's answer or error)."""
    if not isinstance(literal, exp.Literal) or literal.is_string:
        raise NoPlan("PERCENTILE_CONT with a fraction that is not a number")
    fraction = float(literal.this)
    if not 0.0 <= fraction <= 1.0:
        raise NoPlan("PERCENTILE_CONT fraction outside [0, 1]")
    return fraction


def _ranked_at(state: _TwoPhase, argument: object, fraction: float, span: Span) -> str:
    """A percentile of a column (or of the expression at a span), merged as MEDIAN is: each
    worker's row count per (group, value), and the interpolation in `fastmerge`."""
    query = state.query
    if isinstance(argument, tuple):
        inner: Span | None = argument
    else:
        inner = node_span(query, argument) if isinstance(argument, exp.Column) else None
    if inner is None:
        raise NoPlan("PERCENTILE_CONT WITHIN GROUP of anything but a column")
    _value_key(state, inner)
    return _ranked(state, span, "percentile", repr(fraction))


def _ranked(state: _TwoPhase, span: Span, kind: str, *extra: str) -> str:
    """Merge expression of a MEDIAN / PERCENTILE_CONT over `_d0`: each worker also counts
    its rows per value (the weight), and `fastmerge` ranks them."""
    state.partial(_WEIGHT, "count(*)")
    key = token_key(state.query, span)
    state.moments[key] = (kind, "_d0", state.partials[_WEIGHT][0], *extra)
    state.sql_merge = False
    return _moment_column(state, key)


def _moment_column(state: _TwoPhase, key: TokenKey) -> str:
    """The merge's reading of a VAR/STDDEV/MEDIAN value that `moments` adds per group."""
    position = [k for k, v in state.moments.items() if v[0] in moments.MOMENT_KINDS].index(key)
    return f"MAX({quote(moments.column(position))})"


def _call_key(function: str, arg_key: TokenKey) -> TokenKey:
    """The token key of `function(<argument>)`, to share partials with the user's calls."""
    return (("word", function), ("punct", "("), *arg_key, ("punct", ")"))


def _is_float_column(query: Query, node: object) -> bool:
    """Whether `node` is a floating-point column: its AVG is then SUM / COUNT, sharing the
    partials of a SUM and COUNT of it (an integer's AVG keeps a per-worker AVG partial:
    native averages integers in floating point, where a partial integer SUM could overflow).
    """
    if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
        return False
    name = name_of(node.this)
    schema = query.relation.schema
    return name in query.columns and pa.types.is_floating(schema.field(name).type)


def two_phase(query: Query, shards: tuple[int, ...] | None) -> Plan:
    """Rule 3: partial aggregates per worker, final aggregates and the rest in the merge."""
    if any(item.span == (0, 0) for item in query.items):
        raise NoPlan("* in an aggregation")
    state = _TwoPhase(query)
    keys = group_keys(query)
    state.keys = [token_key(query, span) for _, span, _ in keys]
    outputs = [quote(f"_o{i}") for i in range(len(query.items))]
    select = [
        f"{_merged(state, item.node, item.span)} AS {outputs[i]}"
        for i, item in enumerate(query.items)
    ]
    having = ""
    if query.having is not None:
        having = f" HAVING {_merged(state, *query.having, having=True)}"
    order_keys: list[str] = []
    for order in query.order:
        target = order_target(query, order)
        what = outputs[target] if target is not None else _merged(state, order.node, order.span)
        order_keys.append(f"({what}) {order.direction}")
    if not state.partials and not keys and state.distinct is None:
        raise NoPlan("nothing to aggregate")
    group_cols = [quote(f"_k{i}") for i in range(len(keys))]
    worker_cols = [f"{text} AS {group_cols[i]}" for i, (_, _, text) in enumerate(keys)]
    worker_keys = len(keys)
    if state.distinct is not None:
        worker_cols.append(f"{state.distinct[1]} AS {quote('_d0')}")
        worker_keys += 1
    truth = state.true_filters if not keys and state.distinct is not None else {}
    worker_cols += [
        f"{truth.get(name, sql)} AS {quote(name)}" for name, sql in state.partials.values()
    ]
    worker = f"SELECT {', '.join(worker_cols)} {query.from_where}"
    sql_merge = f"SELECT {', '.join(select)} FROM {PARTIALS}"
    if worker_keys:
        worker += " GROUP BY " + ", ".join(str(i + 1) for i in range(worker_keys))
    if keys:
        sql_merge += " GROUP BY " + ", ".join(group_cols)
    sql_merge += having
    if order_keys:
        sql_merge += f" ORDER BY {', '.join(order_keys)}"
    merge: str | None = sql_merge + limits(query.limit, query.offset)
    columns = [f"_k{i}" for i in range(len(keys))] + ["_d0"] * (state.distinct is not None)
    columns += [n for n, _ in state.partials.values()]
    fast = _fast_two_phase(state, query)
    staged = None
    if not state.sql_merge:
        if fast is not None:
            merge = None  # plain items: merged by `fastmerge` only (or gathered)
        elif not moments.STAGE_MEDIAN and any(m[0] in RANK_KINDS for m in state.moments.values()):
            raise NoPlan("MEDIAN or PERCENTILE_CONT inside an expression, HAVING or beside others")
        else:  # the SQL merge over the per-group values `moments` adds first
            staged = moments.staged(len(keys), state.moments.values())
    return Plan(
        Rule.TWO_PHASE,
        query.sql,
        query.relation.name,
        shards,
        worker,
        tuple(columns),
        merge,
        fast=fast,
        staged=staged,
        one_row_each=not worker_keys,
    )


def _fast_two_phase(state: _TwoPhase, query: Query) -> Spec | None:
    """The in-process form of a two-phase merge when every select item is a group key or
    one plain decomposable aggregate call, every ORDER BY key names an item, and there is
    no HAVING; else None (the SQL merge runs)."""
    if query.having is not None:
        return None
    outputs: list[tuple[str, ...]] = []
    for item in query.items:
        key = token_key(query, item.span)
        if key in state.keys:
            outputs.append(("key", f"_k{state.keys.index(key)}"))
            continue
        node = item.node
        if key in state.moments and node_span(query, node) == item.span:
            if state.moments[key][0] == "approx_distinct":
                return None  # the engine's HyperLogLog: SQL merge only
            outputs.append(state.moments[key])
            continue
        kind = _FAST_KIND.get(type(node))
        if kind is None or node_span(query, node) != item.span or key not in state.partials:
            return None
        outputs.append((kind, state.partials[key][0]))
    order: list[SortKey] = []
    items = [token_key(query, item.span) for item in query.items]
    for o in query.order:
        target = order_target(query, o)
        if target is None and token_key(query, o.span) in items:
            target = items.index(token_key(query, o.span))  # ORDER BY count(*) = item count(*)
        if target is None:
            return None
        order.append(SortKey(f"_o{target}", o.desc, o.nulls_first))
    keys = tuple(f"_k{i}" for i in range(len(state.keys)))
    return Spec(True, keys, tuple(outputs), tuple(order), query.limit, query.offset)
