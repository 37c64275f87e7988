"""The cluster watermark of one source, as one native instance computes it (pure logic).

`SourceClock` follows the insert calls of one source: the watermark is the largest event time
seen minus the declared delay, raised by each call *before* its late rows are dropped, and by
explicit `Writer.watermark()` calls; it tells the caller when buffered rows must be shipped,
or a watermark set on the workers, so that each worker drops exactly the rows that one
instance drops. Also the parsing of a source's WATERMARK clause and of INTERVAL literals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from laminardb.api.errors import LaminarError
from laminardb.cluster.catalog import Relation
from laminardb.plan.tokens import Token, tokenize

MIN_WATERMARK = -(2**63)
DEFAULT_DELAY_MS = 1000
"""The delay the engine gives a WATERMARK expression it does not read (`ts - 5000`, a
bracketed one, an INTERVAL whose value is not a whole number)."""

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
    try:
        found = list(tokenize(relation.create_sql))
    except LaminarError:
        return None
    for i, token in enumerate(found[:-2]):
        if token.is_word("WATERMARK") and found[i + 1].is_word("FOR") and found[i + 2].is_ident:
            name = found[i + 2].ident
            column = next((n for n in relation.schema.names if n.lower() == name.lower()), name)
            return column, _delay(_expression(found[i + 3 :]))
    return None


def _expression(rest: list[Token]) -> list[Token]:
    """The tokens of `AS <expression>` up to the end of the clause (none without AS)."""
    if not rest or not rest[0].is_word("AS"):
        return []
    out: list[Token] = []
    depth = 0
    for token in rest[1:]:
        if depth == 0 and (token.is_punct(",") or token.is_punct(")")):
            break
        depth += token.is_punct("(") - token.is_punct(")")
        out.append(token)
    return out


_DELAY_UNITS: dict[str, Callable[[int], int]] = {
    "SECOND": lambda n: n * 1000,
    "MINUTE": lambda n: n * 60_000,
    "HOUR": lambda n: n * 3_600_000,
    "DAY": lambda n: n * 86_400_000,
    "MILLISECOND": lambda n: n,
    "MICROSECOND": lambda n: n // 1000,
}
"""The INTERVAL units the engine reads in a watermark, applied to the whole number written;
any other unit (plurals such as MINUTES included) or none counts as seconds."""


def _delay(expression: list[Token]) -> int:
    """The engine's delay for a WATERMARK expression, form by form as it was found to read
    them: none, the bare column, or a top-level `+`, `*` or `/` is 0; `col - INTERVAL 'n'
    UNIT` is n of UNIT (n: the part of the value before a `:`, a whole number, else 1 s);
    anything else is 1 s."""
    if not expression or (len(expression) == 1 and expression[0].is_ident):
        return 0
    depth = 0
    additive: int | None = None
    multiplicative = False
    for i, token in enumerate(expression):
        top = depth == 0 and i > 0
        if top and (token.is_punct("+") or token.is_punct("-")):
            additive = i
        elif top and (token.is_punct("*") or token.is_punct("/")):
            multiplicative = True
        depth += token.is_punct("(") - token.is_punct(")")
    if additive is None:
        return 0 if multiplicative else DEFAULT_DELAY_MS
    if expression[additive].is_punct("+"):
        return 0
    right = expression[additive + 1 :]
    interval = len(right) >= 2 and right[0].is_word("INTERVAL") and right[1].kind in _VALUES
    if not interval or any(t.is_punct("*") or t.is_punct("/") for t in right):
        return DEFAULT_DELAY_MS  # `ts - 5000`, `ts - INTERVAL '2' SECOND * 2`
    value = right[1].text.strip("'").split(":")[0]
    if not re.fullmatch(r"\+?\d+", value):
        return DEFAULT_DELAY_MS
    unit = right[2].text.upper() if len(right) > 2 and right[2].kind == "word" else ""
    return _DELAY_UNITS.get(unit, _DELAY_UNITS["SECOND"])(int(value))


_VALUES = ("string", "number")


# -- the cluster watermark of one source ---------------------------------------------------------


def epoch_ms(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Event times as the engine compares them with a watermark: BIGINT as is, TIMESTAMP as
    int64 epoch milliseconds (truncated)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return pc.cast(column, pa.timestamp("ms", kind.tz), safe=False).cast(pa.int64())
    return column


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

    def advance(self, timestamp: int) -> None:
        """A watermark set explicitly (`Writer.watermark`); it never moves backwards. The caller
        ships what is buffered first, so nothing waiting is judged by it."""
        self.watermark = max(self.watermark, int(timestamp))
        self.buffered_min = None

    def observe(self, table: pa.Table, buffered: bool) -> Step:
        """Account for an insert call of `table`; `buffered`: rows of this source wait unsent."""
        if not buffered:
            self.buffered_min = None
        ts = epoch_ms(table.column(self.column))
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
