"""Catalog, topology and metrics values: read-only records with the native reprs.

The coordinator builds them from what the workers report (merged over shards), so callers see
the same classes and properties as with one native instance. Like native, they compare by
identity and have no setters. `SourceInfo.partition_by` and `WorkerInfo` are ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PipelineEdge",
    "PipelineMetrics",
    "PipelineNode",
    "PipelineTopology",
    "QueryInfo",
    "SinkInfo",
    "SourceInfo",
    "SourceMetrics",
    "StreamInfo",
    "StreamMetrics",
    "WorkerInfo",
]


class SourceInfo:
    """A registered source: name, Arrow schema, watermark column and (ours) partition key."""

    __slots__ = ("_name", "_partition_by", "_schema", "_watermark_column")

    def __init__(
        self,
        name: str,
        schema: Any,
        watermark_column: str | None = None,
        partition_by: Iterable[str] = (),
    ) -> None:
        self._name = name
        self._schema = schema
        self._watermark_column = watermark_column
        self._partition_by = tuple(partition_by)

    @property
    def name(self) -> str:
        """Source name."""
        return self._name

    @property
    def schema(self) -> Any:
        """The declared schema as a pyarrow.Schema."""
        return self._schema

    @property
    def watermark_column(self) -> str | None:
        """The column of the WATERMARK FOR clause, or None."""
        return self._watermark_column

    @property
    def partition_by(self) -> list[str]:
        """The PARTITION BY key columns (empty: rows are spread round-robin)."""
        return list(self._partition_by)

    def __repr__(self) -> str:
        return f"SourceInfo(name='{self._name}', columns={len(self._schema)})"


class SinkInfo:
    """A registered sink."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """Sink name."""
        return self._name

    def __repr__(self) -> str:
        return f"SinkInfo(name='{self._name}')"


class StreamInfo:
    """A registered stream and its defining SQL (the EMIT clause stripped, like native)."""

    __slots__ = ("_name", "_sql")

    def __init__(self, name: str, sql: str | None = None) -> None:
        self._name = name
        self._sql = sql

    @property
    def name(self) -> str:
        """Stream name."""
        return self._name

    @property
    def sql(self) -> str | None:
        """The stream's SELECT, or None."""
        return self._sql

    def __repr__(self) -> str:
        return f"StreamInfo(name='{self._name}')"


class QueryInfo:
    """A query the connection has run (native keeps every one, active forever)."""

    __slots__ = ("_active", "_id", "_sql")

    def __init__(self, id: int, sql: str, active: bool) -> None:
        self._id = id
        self._sql = sql
        self._active = active

    @property
    def id(self) -> int:
        """Query id."""
        return self._id

    @property
    def sql(self) -> str:
        """The query's SQL text."""
        return self._sql

    @property
    def active(self) -> bool:
        """Whether the query is still registered as running."""
        return self._active

    def __repr__(self) -> str:
        return f"QueryInfo(id={self._id}, active={'true' if self._active else 'false'})"


class PipelineNode:
    """A node of the pipeline graph: a source (with schema), a stream (with SQL) or a sink."""

    __slots__ = ("_name", "_node_type", "_schema", "_sql")

    def __init__(
        self, name: str, node_type: str, schema: Any | None = None, sql: str | None = None
    ) -> None:
        self._name = name
        self._node_type = node_type
        self._schema = schema
        self._sql = sql

    @property
    def name(self) -> str:
        """Node name."""
        return self._name

    @property
    def node_type(self) -> str:
        """One of 'source', 'stream', 'sink'."""
        return self._node_type

    @property
    def schema(self) -> Any | None:
        """The node's pyarrow.Schema (native sets it for sources only), or None."""
        return self._schema

    @property
    def sql(self) -> str | None:
        """The defining SQL of a stream, or None."""
        return self._sql

    def __repr__(self) -> str:
        return f"PipelineNode(name='{self._name}', type='{self._node_type}')"


class PipelineEdge:
    """A data-flow edge between two named nodes."""

    __slots__ = ("_from_node", "_to_node")

    def __init__(self, from_node: str, to_node: str) -> None:
        self._from_node = from_node
        self._to_node = to_node

    @property
    def from_node(self) -> str:
        """Upstream node name."""
        return self._from_node

    @property
    def to_node(self) -> str:
        """Downstream node name."""
        return self._to_node

    def __repr__(self) -> str:
        return f"PipelineEdge('{self._from_node}' -> '{self._to_node}')"


class PipelineTopology:
    """All nodes and edges of the pipeline graph."""

    __slots__ = ("_edges", "_nodes")

    def __init__(self, nodes: Iterable[PipelineNode], edges: Iterable[PipelineEdge]) -> None:
        self._nodes = tuple(nodes)
        self._edges = tuple(edges)

    @property
    def nodes(self) -> list[PipelineNode]:
        """Sources, streams and sinks."""
        return list(self._nodes)

    @property
    def edges(self) -> list[PipelineEdge]:
        """Edges between them."""
        return list(self._edges)

    def __repr__(self) -> str:
        return f"PipelineTopology(nodes={len(self._nodes)}, edges={len(self._edges)})"


class PipelineMetrics:
    """A pipeline-wide metrics snapshot (ingested counts rows, like native)."""

    __slots__ = (
        "_pipeline_watermark",
        "_sink_count",
        "_source_count",
        "_state",
        "_stream_count",
        "_total_batches",
        "_total_cycles",
        "_total_events_dropped",
        "_total_events_emitted",
        "_total_events_ingested",
        "_uptime_secs",
    )

    def __init__(
        self,
        total_events_ingested: int = 0,
        total_events_emitted: int = 0,
        total_events_dropped: int = 0,
        total_cycles: int = 0,
        total_batches: int = 0,
        uptime_secs: float = 0.0,
        state: str = "Created",
        source_count: int = 0,
        stream_count: int = 0,
        sink_count: int = 0,
        pipeline_watermark: int = -(2**63),
    ) -> None:
        self._total_events_ingested = total_events_ingested
        self._total_events_emitted = total_events_emitted
        self._total_events_dropped = total_events_dropped
        self._total_cycles = total_cycles
        self._total_batches = total_batches
        self._uptime_secs = uptime_secs
        self._state = state
        self._source_count = source_count
        self._stream_count = stream_count
        self._sink_count = sink_count
        self._pipeline_watermark = pipeline_watermark

    @property
    def total_events_ingested(self) -> int:
        """Rows ingested over all sources."""
        return self._total_events_ingested

    @property
    def total_events_emitted(self) -> int:
        """Rows emitted by streams."""
        return self._total_events_emitted

    @property
    def total_events_dropped(self) -> int:
        """Rows dropped (late data)."""
        return self._total_events_dropped

    @property
    def total_cycles(self) -> int:
        """Pipeline cycles run."""
        return self._total_cycles

    @property
    def total_batches(self) -> int:
        """Batches processed."""
        return self._total_batches

    @property
    def uptime_secs(self) -> float:
        """Seconds since the pipeline started."""
        return self._uptime_secs

    @property
    def state(self) -> str:
        """Pipeline state: 'Created', 'Running', 'Stopped', ..."""
        return self._state

    @property
    def source_count(self) -> int:
        """Registered sources."""
        return self._source_count

    @property
    def stream_count(self) -> int:
        """Registered streams."""
        return self._stream_count

    @property
    def sink_count(self) -> int:
        """Registered sinks."""
        return self._sink_count

    @property
    def pipeline_watermark(self) -> int:
        """The global watermark (i64::MIN before any)."""
        return self._pipeline_watermark

    def __repr__(self) -> str:
        return (
            f"PipelineMetrics(state={self._state}, ingested={self._total_events_ingested}, "
            f"emitted={self._total_events_emitted})"
        )


class _NodeMetrics:
    """Fields shared by source and stream metrics."""

    __slots__ = (
        "_capacity",
        "_is_backpressured",
        "_name",
        "_pending",
        "_total_events",
        "_watermark",
    )

    def __init__(
        self,
        name: str,
        total_events: int,
        pending: int,
        capacity: int,
        is_backpressured: bool,
        watermark: int,
    ) -> None:
        self._name = name
        self._total_events = total_events
        self._pending = pending
        self._capacity = capacity
        self._is_backpressured = is_backpressured
        self._watermark = watermark

    @property
    def name(self) -> str:
        """Source or stream name."""
        return self._name

    @property
    def total_events(self) -> int:
        """Events seen (batches, for a native source)."""
        return self._total_events

    @property
    def pending(self) -> int:
        """Items waiting in the buffer."""
        return self._pending

    @property
    def capacity(self) -> int:
        """Buffer capacity."""
        return self._capacity

    @property
    def is_backpressured(self) -> bool:
        """Whether the buffer is full enough to push back."""
        return self._is_backpressured

    @property
    def watermark(self) -> int:
        """Current watermark (i64::MIN before any)."""
        return self._watermark

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name='{self._name}', events={self._total_events}, "
            f"pending={self._pending})"
        )


class SourceMetrics(_NodeMetrics):
    """Metrics of one source."""

    __slots__ = ("_utilization",)

    def __init__(
        self,
        name: str,
        total_events: int = 0,
        pending: int = 0,
        capacity: int = 0,
        is_backpressured: bool = False,
        watermark: int = -(2**63),
        utilization: float = 0.0,
    ) -> None:
        super().__init__(name, total_events, pending, capacity, is_backpressured, watermark)
        self._utilization = utilization

    @property
    def utilization(self) -> float:
        """Fill ratio of the buffer, 0.0 to 1.0."""
        return self._utilization


class StreamMetrics(_NodeMetrics):
    """Metrics of one stream."""

    __slots__ = ("_sql",)

    def __init__(
        self,
        name: str,
        total_events: int = 0,
        pending: int = 0,
        capacity: int = 0,
        is_backpressured: bool = False,
        watermark: int = -(2**63),
        sql: str | None = None,
    ) -> None:
        super().__init__(name, total_events, pending, capacity, is_backpressured, watermark)
        self._sql = sql

    @property
    def sql(self) -> str | None:
        """The stream's SQL, or None."""
        return self._sql


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker process as the coordinator sees it (ours: native has no workers)."""

    shard: int
    pid: int
    alive: bool
    rss_bytes: int
    rows_ingested: int
    batches_ingested: int = 0
    cpu_percent: float = 0.0
