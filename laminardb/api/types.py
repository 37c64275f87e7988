"""The pure-Python convenience types of the native package, re-created.

Column, Schema, TableStats, Watermark, CheckpointStatus, Metrics, ChangeRow, ChangeEvent and
MaterializedView behave like their native counterparts. They only wrap values or call public
methods of a connection (duck typed), so they work with our coordinator's Connection too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChangeEvent",
    "ChangeRow",
    "CheckpointStatus",
    "Column",
    "MaterializedView",
    "Metrics",
    "Schema",
    "TableStats",
    "Watermark",
]


@dataclass(frozen=True)
class Column:
    """One column: name, Arrow type as text (e.g. 'int64') and nullability."""

    name: str
    type: str
    nullable: bool = True


def _column(field: Any) -> Column:
    return Column(name=field.name, type=str(field.type), nullable=field.nullable)


class Schema:
    """A pyarrow.Schema with column-descriptor accessors."""

    def __init__(self, arrow_schema: Any) -> None:
        self._schema = arrow_schema

    @property
    def arrow_schema(self) -> Any:
        """The wrapped pyarrow.Schema."""
        return self._schema

    @property
    def columns(self) -> list[Column]:
        """One Column per field, in order."""
        return [_column(field) for field in self._schema]

    @property
    def names(self) -> list[str]:
        """Column names in order."""
        return [field.name for field in self._schema]

    def __len__(self) -> int:
        return len(self._schema)

    def __getitem__(self, key: int | str) -> Column:
        return _column(self._schema.field(key))

    def __repr__(self) -> str:
        return "Schema(" + ", ".join(f"{c.name}: {c.type}" for c in self.columns) + ")"


@dataclass(frozen=True)
class TableStats:
    """Row count and size of a source table."""

    row_count: int
    size_bytes: int


@dataclass(frozen=True)
class Watermark:
    """Watermark of a source or stream, with its lag behind wall time."""

    current: int
    lag_ms: int = 0


@dataclass(frozen=True)
class CheckpointStatus:
    """Checkpoint state (kept for compatibility; `checkpoint()` returns CheckpointResult)."""

    checkpoint_id: int | None
    enabled: bool


class Metrics:
    """PipelineMetrics with derived rates, for display."""

    def __init__(self, pipeline_metrics: Any) -> None:
        self._inner = pipeline_metrics

    @property
    def events_per_second(self) -> float:
        """Rows ingested per second of uptime (0.0 before the pipeline ran)."""
        uptime = self._inner.uptime_secs
        if uptime <= 0:
            return 0.0
        return float(self._inner.total_events_ingested / uptime)

    @property
    def total_events(self) -> int:
        """Rows ingested over all sources."""
        return int(self._inner.total_events_ingested)

    @property
    def uptime_secs(self) -> float:
        """Seconds since the pipeline started."""
        return float(self._inner.uptime_secs)

    @property
    def state(self) -> str:
        """Pipeline state."""
        return str(self._inner.state)

    def __repr__(self) -> str:
        return (
            f"Metrics(state={self.state!r}, eps={self.events_per_second:.1f}, "
            f"uptime={self.uptime_secs:.1f}s)"
        )


class ChangeRow:
    """One row of a change stream: the operation (`op`, a plain attribute) and its values."""

    def __init__(self, op: str, data: dict[str, Any]) -> None:
        self.op = op
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def keys(self) -> list[str]:
        """Column names."""
        return list(self._data)

    def values(self) -> list[Any]:
        """Values in column order."""
        return list(self._data.values())

    def to_dict(self) -> dict[str, Any]:
        """A copy of the values by column name (without `op`)."""
        return dict(self._data)

    def __repr__(self) -> str:
        return f"ChangeRow(op={self.op!r}, {self._data})"


class ChangeEvent:
    """One batch of a subscription as ChangeRows, built on first iteration."""

    def __init__(self, query_result: Any, op: str = "Insert") -> None:
        self._result = query_result
        self._op = op
        self._rows: list[ChangeRow] | None = None

    def _change_rows(self) -> list[ChangeRow]:
        if self._rows is None:
            names = list(self._result.columns)
            self._rows = [
                ChangeRow(op=self._op, data=dict(zip(names, row, strict=False)))
                for row in self._result
            ]
        return self._rows

    def __iter__(self) -> Iterator[ChangeRow]:
        return iter(self._change_rows())

    def __len__(self) -> int:
        return int(self._result.num_rows)

    def df(self) -> Any:
        """The batch as a pandas DataFrame."""
        return self._result.df()

    def pl(self, *, lazy: bool = False) -> Any:
        """The batch as a polars DataFrame (LazyFrame when `lazy`)."""
        return self._result.pl(lazy=lazy)

    def arrow(self) -> Any:
        """The batch as a pyarrow.Table."""
        return self._result.arrow()

    def __repr__(self) -> str:
        return f"ChangeEvent(rows={len(self)}, op={self._op!r})"


class MaterializedView:
    """A named stream of a connection, with query and subscribe shortcuts."""

    def __init__(self, conn: Any, name: str, sql: str | None = None) -> None:
        self._conn = conn
        self._name = name
        self._sql = sql

    @property
    def name(self) -> str:
        """The stream name."""
        return self._name

    @property
    def sql(self) -> str | None:
        """Its SQL definition, when known."""
        return self._sql

    def query(self, where: str = "") -> Any:
        """Run the stream's SQL now as a batch query, optionally with a WHERE condition."""
        return self._conn.query_stream(self._name, where or None)

    def schema(self) -> Schema:
        """The stream's schema."""
        return Schema(self._conn.schema(self._name))

    def subscribe(self, handler: Callable[[ChangeEvent], None] | None = None) -> Any:
        """The stream's subscription, or, given a handler, a daemon thread feeding it events."""
        subscription = self._conn.subscribe_stream(self._name)
        if handler is None:
            return subscription

        def pump() -> None:
            for batch in subscription:
                handler(ChangeEvent(batch))

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        return thread

    def __repr__(self) -> str:
        return f"MaterializedView(name={self._name!r})"
