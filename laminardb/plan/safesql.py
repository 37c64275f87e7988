"""Conditions that cannot fail at run time, printed as SQL (for `pushdown`).

Pure logic. The native engine turns a run-time error (an integer division by zero, a failed
cast, `abs` of the smallest integer) into a partial or empty answer instead of raising, so a
condition may only be moved to the workers when it can never fail; and a query whose other
conditions may fail keeps all of them where native evaluates them. `condition` accepts:
columns, literals, AND / OR / NOT, comparisons, IS [NOT] NULL / TRUE / FALSE, IN (literals),
BETWEEN literals, LIKE / ILIKE a string literal, typed DATE / TIMESTAMP literals, and
`+ - *` and unary minus over signed integer and float values (the engine wraps integers on
overflow: measured), `/` and `%` when a float is involved or the divisor is an integer
literal other than 0 and -1. Literals must fit the type they meet without a cast that can
fail (a string compared with a timestamp must be an ISO date/time; a number only with
numbers). Anything else raises `NoPush`. Printing is from sqlglot's parse, fully
parenthesized, with column names quoted exactly (native folds no case) and no qualifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pyarrow as pa
from sqlglot import exp

from laminardb.cluster.catalog import quote


class NoPush(Exception):
    """This part of the query cannot be pushed (the message says why)."""


Typer = Callable[[exp.Column], pa.DataType]
"""The type of a column reference (NoPush when it cannot be known)."""

_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[0-9]+")
_COMPARE: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
}
_FLIPPED = {"=": "=", "<>": "<>", ">": "<", ">=": "<=", "<": ">", "<=": ">="}
_ARITHMETIC: dict[type[exp.Expr], str] = {
    exp.Add: "+",
    exp.Sub: "-",
    exp.Mul: "*",
    exp.Div: "/",
    exp.Mod: "%",
}
_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?"
)
_TYPED_LITERALS = {exp.DataType.Type.DATE: "DATE", exp.DataType.Type.TIMESTAMP: "TIMESTAMP"}


def schema_typer(schema: pa.Schema) -> Typer:
    """Column types from one relation's schema (exact names)."""

    def typer(col: exp.Column) -> pa.DataType:
        if col.name not in schema.names:
            raise NoPush("no such column")
        return schema.field(col.name).type

    return typer


def condition(node: exp.Expr, typer: Typer, clause: bool = False) -> str:
    """A boolean condition as SQL (NoPush outside the subset that cannot fail). With
    `clause`, only checks that a condition anywhere in the query cannot fail: EXISTS /
    IN (sub-query) and comparisons of constants are then allowed too (the text is not SQL)."""
    if isinstance(node, exp.Paren):
        return condition(node.this, typer, clause)
    if isinstance(node, exp.And | exp.Or):
        op = "AND" if isinstance(node, exp.And) else "OR"
        left, right = condition(node.this, typer, clause), condition(node.expression, typer, clause)
        return f"({left} {op} {right})"
    if isinstance(node, exp.Not):
        return f"(NOT {condition(node.this, typer, clause)})"
    if clause and isinstance(node, exp.Exists):
        return "EXISTS"
    if type(node) in _COMPARE:
        return _comparison(node, typer, clause)
    if isinstance(node, exp.Is):
        right = node.expression
        if not isinstance(right, exp.Null | exp.Boolean):
            raise NoPush("unusual IS")
        text, kind = value(node.this, typer)
        if isinstance(right, exp.Boolean) and not pa.types.is_boolean(kind):
            raise NoPush("IS TRUE / FALSE over a non-boolean value")
        negate = " NOT" if node.args.get("negate") else ""
        return f"({text} IS{negate} {literal(right)})"
    if isinstance(node, exp.In):
        if node.args.get("unnest") or node.args.get("field"):
            raise NoPush("unusual IN")
        text, kind = value(node.this, typer)
        if node.args.get("query"):
            if clause:
                return "IN"
            raise NoPush("IN over a sub-query")
        if not node.expressions:
            raise NoPush("unusual IN")
        listed = ", ".join(typed_literal(v, kind) for v in node.expressions)
        return f"({text} IN ({listed}))"
    if isinstance(node, exp.Between):
        if node.args.get("symmetric"):
            raise NoPush("unusual BETWEEN")
        text, kind = value(node.this, typer)
        low = typed_literal(node.args["low"], kind)
        high = typed_literal(node.args["high"], kind)
        return f"({text} BETWEEN {low} AND {high})"
    if isinstance(node, exp.Like | exp.ILike):
        op = "LIKE" if isinstance(node, exp.Like) else "ILIKE"
        pattern = node.expression
        if not isinstance(node.this, exp.Column) or not _is_string(pattern):
            raise NoPush("unusual LIKE")
        text, kind = value(node.this, typer)
        if not pa.types.is_string(kind):
            raise NoPush("LIKE over a non-string column")
        return f"({text} {op} {literal(pattern)})"
    if isinstance(node, exp.Column):
        text, kind = value(node, typer)
        if pa.types.is_boolean(kind):
            return text
    if clause and isinstance(node, exp.Boolean | exp.Null):
        return literal(node)
    raise NoPush(f"{type(node).__name__} is not pushed")


def _comparison(node: exp.Expr, typer: Typer, clause: bool) -> str:
    left, right = node.this, node.expression
    op = _COMPARE[type(node)]
    if _is_literal(left) and _is_literal(right):
        if clause:
            return f"({literal(left)} {op} {literal(right)})"  # constants: same everywhere
        raise NoPush("comparison without a column")
    if _is_literal(left):
        left, right, op = right, left, _FLIPPED[op]
    text, kind = value(left, typer)
    if _is_literal(right):
        return f"({text} {op} {typed_literal(right, kind)})"
    other, other_kind = value(right, typer)
    if not _comparable(kind, other_kind):
        raise NoPush("comparison that needs a run-time cast")
    return f"({text} {op} {other})"


def value(node: exp.Expr, typer: Typer) -> tuple[str, pa.DataType]:
    """A column, or arithmetic over signed integer / float columns and number literals that
    cannot fail, as SQL with its type."""
    if isinstance(node, exp.Paren):
        return value(node.this, typer)
    if isinstance(node, exp.Column):
        return quote(node.name), typer(node)
    if isinstance(node, exp.Literal) and not node.is_string:
        text = literal(node)
        return text, pa.int64() if _INTEGER.fullmatch(text) else pa.float64()
    if isinstance(node, exp.Neg):
        text, kind = value(node.this, typer)
        _arithmetic_type(kind)
        return f"(-{text})", kind
    if type(node) in _ARITHMETIC:
        left, left_kind = value(node.this, typer)
        right, right_kind = value(node.expression, typer)
        _arithmetic_type(left_kind)
        _arithmetic_type(right_kind)
        floating = pa.types.is_floating(left_kind) or pa.types.is_floating(right_kind)
        kind = pa.float64() if floating else pa.int64()
        if isinstance(node, exp.Div | exp.Mod) and not floating:
            divisor = node.expression
            # a negative divisor is a Neg node (refused): no i64::MIN / -1 overflow either
            if not (
                isinstance(divisor, exp.Literal)
                and not divisor.is_string
                and _INTEGER.fullmatch(str(divisor.this))
                and int(str(divisor.this)) != 0
            ):
                raise NoPush("integer division by a value that may be 0")
        return f"({left} {_ARITHMETIC[type(node)]} {right})", kind
    raise NoPush(f"{type(node).__name__} is not a value that cannot fail")


def _arithmetic_type(kind: pa.DataType) -> None:
    if not (pa.types.is_floating(kind) or pa.types.is_signed_integer(kind)):
        raise NoPush("arithmetic over a type that may overflow with an error")


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _temporal(t: pa.DataType) -> bool:
    return bool(pa.types.is_date(t) or pa.types.is_timestamp(t))


def _comparable(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether comparing values of these types needs no cast that can fail (the engine
    widens numbers, and compares a number with a string as strings)."""
    if a == b or (_numeric(a) and _numeric(b)) or (_temporal(a) and _temporal(b)):
        return True
    strings = pa.types.is_string(a), pa.types.is_string(b)
    return all(strings) or (any(strings) and (_numeric(a) or _numeric(b)))


def _is_literal(node: exp.Expr) -> bool:
    if isinstance(node, exp.Paren):
        return _is_literal(node.this)
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    return isinstance(node, exp.Literal | exp.Null | exp.Boolean) or (
        type(node) is exp.Cast and _is_string(node.this)
    )


def typed_literal(node: exp.Expr, kind: pa.DataType) -> str:
    """A literal compared with a value of type `kind`, only where no run-time cast of either
    can fail (NoPush otherwise)."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Null):
        return "NULL"
    if isinstance(node, exp.Boolean):
        ok = pa.types.is_boolean(kind)
    elif _is_string(node):
        ok = pa.types.is_string(kind) or (
            _temporal(kind) and _ISO_TIME.fullmatch(str(node.this)) is not None
        )
    elif isinstance(node, exp.Cast):
        ok = _temporal(kind)
    else:  # a number, or a negated one
        ok = _numeric(kind)
    if not ok:
        raise NoPush("literal of another type than the value")
    return literal(node)


def _is_string(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and node.is_string


def literal(node: exp.Expr) -> str:
    """A literal as SQL (NoPush for anything else)."""
    if isinstance(node, exp.Paren):
        return literal(node.this)
    if isinstance(node, exp.Null):
        return "NULL"
    if isinstance(node, exp.Boolean):
        return "TRUE" if node.this else "FALSE"
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return f"(-{literal(node.this)})"
    if type(node) is exp.Cast and _is_string(node.this):
        to = node.args.get("to")
        kind = to.this if isinstance(to, exp.DataType) else None
        if isinstance(to, exp.DataType) and not to.expressions and kind in _TYPED_LITERALS:
            return f"{_TYPED_LITERALS[kind]} {literal(node.this)}"
        raise NoPush("unusual typed literal")
    if isinstance(node, exp.Literal):
        text = str(node.this)
        if node.is_string:
            if "\\" in text:
                raise NoPush("backslash in a string literal")
            return "'" + text.replace("'", "''") + "'"
        if _NUMBER.fullmatch(text):
            return text
    raise NoPush(f"{type(node).__name__} is not a literal")
