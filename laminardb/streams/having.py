"""A merged window stream's HAVING, evaluated by the coordinator after the merge (pure logic).

Workers cannot filter groups by HAVING: a group's partial on one worker says nothing about its
total. So `rewrite` (called by the merge plan, merge.py) has every aggregate that HAVING names
computed as one more partial and rewrites the condition over the merged columns (`__g<i>`
group columns, `__f<i>` final aggregate values); `predicate` turns that into an Arrow compute
expression that the merger applies to each window's merged rows, as the planner does for
queries.

Only plain predicates are translated: comparisons, AND/OR/NOT, IS [NOT] NULL, BETWEEN,
+ - * and unary minus over columns and literals. Anything else is reported (a phrase) so the
stream is refused with that reason rather than filtered differently from the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pyarrow.compute as pc
from sqlglot import exp

from laminardb.plan.statements import SQLGLOT_DIALECT

_COMPARE: dict[type[exp.Expression], Callable[[Any, Any], Any]] = {
    exp.EQ: pc.equal,
    exp.NEQ: pc.not_equal,
    exp.GT: pc.greater,
    exp.GTE: pc.greater_equal,
    exp.LT: pc.less,
    exp.LTE: pc.less_equal,
    exp.Add: pc.add,
    exp.Sub: pc.subtract,
    exp.Mul: pc.multiply,
}


class Untranslatable(Exception):
    """The condition uses something this module does not evaluate (the message says what)."""


def predicate(condition: Any) -> pc.Expression:
    """The Arrow expression of a HAVING `condition` (a sqlglot expression) over already-renamed
    columns; raises `Untranslatable` naming the part it does not evaluate."""
    node = cast(exp.Expression, condition)
    if isinstance(node, exp.Paren):
        return predicate(node.this)
    if isinstance(node, exp.Column):
        return pc.field(node.name)
    if isinstance(node, exp.Boolean):
        return pc.scalar(bool(node.this))
    if isinstance(node, exp.Literal):
        return pc.scalar(_literal(node))
    if isinstance(node, exp.And):
        return predicate(node.left) & predicate(node.right)
    if isinstance(node, exp.Or):
        return predicate(node.left) | predicate(node.right)
    if isinstance(node, exp.Not):
        return ~predicate(node.this)
    if isinstance(node, exp.Neg):
        return pc.negate(predicate(node.this))
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        missing = pc.is_null(predicate(node.this))
        return ~missing if node.args.get("negate") else missing  # sqlglot: IS NOT NULL
    if isinstance(node, exp.Between):
        value = predicate(node.this)
        low, high = predicate(node.args["low"]), predicate(node.args["high"])
        return pc.greater_equal(value, low) & pc.less_equal(value, high)
    function = _COMPARE.get(type(node))
    if function is not None:
        binary = cast(exp.Binary, node)
        return function(predicate(binary.left), predicate(binary.right))
    raise Untranslatable(node.sql())


def _literal(node: exp.Literal) -> int | float | str:
    if node.is_string:
        return str(node.this)
    text = str(node.this)
    try:
        return int(text)
    except ValueError:
        return float(text)


def rewrite(
    condition: exp.Expression,
    group_sql: list[str],
    selected: set[str],
    aliases: set[str],
    add_agg: Callable[[exp.Expression, str], int | str],
    agg_kind: Callable[[exp.Expression], str | None],
) -> exp.Expression | str:
    """HAVING over the merged columns (`__g<i>`, `__f<i>`: each aggregate it names becomes
    one more partial through `add_agg`), or why it is not merged. The engine emits nothing
    at all for a window stream whose HAVING repeats an aggregate (or an alias) of its SELECT
    list, so such a stream is refused with that reason rather than served silently empty."""
    problems: list[str] = []
    added: dict[str, int] = {}

    def rewrite(node: exp.Expression) -> exp.Expression:
        kind = agg_kind(node)
        text = node.sql(dialect=SQLGLOT_DIALECT)
        if kind is not None:
            if text in selected:
                problems.append(
                    f"its HAVING repeats {node.sql()} of its SELECT list (the engine then emits "
                    "nothing for the stream)"
                )
                return node
            if text not in added:
                index = add_agg(node, kind)
                if isinstance(index, str):
                    problems.append(index)
                    return node
                added[text] = index
            return exp.column(f"__f{added[text]}")
        if isinstance(node, exp.Column):
            if text in group_sql:
                return exp.column(f"__g{group_sql.index(text)}")
            if node.name.lower() in aliases:
                problems.append(
                    f"its HAVING names the output {node.name} (the engine then emits nothing "
                    "for the stream)"
                )
            else:
                problems.append(f"its HAVING names {node.sql()}, which is not grouped")
        return node

    rewritten = condition.copy().transform(rewrite)
    if problems:
        return problems[0]
    try:
        predicate(rewritten)
    except Untranslatable as exc:
        return f"its HAVING uses {exc}, which is not evaluated across workers"
    return rewritten
