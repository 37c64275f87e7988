"""What a benchmark run measures and how figures are derived from it (pure: no I/O).

A workload returns `Measurement`s: one per (case, target), where a target is one native
instance, the cluster with N workers, or an outside reference (DuckDB, polars). Every
throughput is turned into a ratio against the native instance measured in the same run for
the same case, because this machine is noisy and only same-run ratios compare.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

NATIVE = "native"
CLUSTER = "cluster"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProcessStat:
    """CPU and memory of one process over a timed section."""

    role: str  # "coordinator", "worker 0", ... ("coordinator" is the benchmark's own process)
    pid: int
    cpu_percent: float  # CPU time / wall time * 100, may exceed 100 (threads)
    rss_bytes: int  # peak resident set seen while sampling


@dataclass
class Measurement:
    """One timed run of one case on one target."""

    workload: str
    case: str
    target: str  # NATIVE, CLUSTER, or an outside reference ("duckdb", "polars")
    workers: int | None  # worker processes for CLUSTER, None otherwise
    rows: int  # rows processed by the timed section
    seconds: float  # wall time of the timed section
    latencies_s: list[float] = field(default_factory=list)  # per call, where it applies
    processes: list[ProcessStat] = field(default_factory=list)
    shm_bytes: int | None = None  # bytes the coordinator wrote into shared memory
    error: str | None = None  # the run failed: why (its figures are not used)
    note: str = ""

    @property
    def label(self) -> str:
        """How the target is shown: `native`, `clusterx2`, `duckdb`."""
        return f"{self.target}x{self.workers}" if self.target == CLUSTER else self.target

    @property
    def rows_per_s(self) -> float | None:
        if self.error is not None or self.seconds <= 0:
            return None
        return self.rows / self.seconds


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or baseline <= 0:
        return None
    return value / baseline


@dataclass(frozen=True)
class Row:
    """One line of the report: a measurement with its derived figures."""

    m: Measurement
    rows_per_s: float | None
    ratio: float | None
    median_s: float | None
    p99_s: float | None
    coordinator_cpu: float | None
    workers_cpu: float | None  # summed over the worker processes
    coordinator_rss: int | None
    workers_rss: int | None  # summed over the worker processes


def summarise(measurements: Iterable[Measurement]) -> list[Row]:
    """Derive every row's figures; ratios are against the same case's native measurement."""
    ms = list(measurements)
    baseline: dict[tuple[str, str], float | None] = {
        (m.workload, m.case): m.rows_per_s for m in ms if m.target == NATIVE
    }
    rows = []
    for m in ms:
        coord = [p for p in m.processes if p.role == "coordinator"]
        work = [p for p in m.processes if p.role != "coordinator"]
        rows.append(
            Row(
                m=m,
                rows_per_s=m.rows_per_s,
                ratio=ratio(m.rows_per_s, baseline.get((m.workload, m.case))),
                median_s=statistics.median(m.latencies_s) if m.latencies_s else None,
                p99_s=percentile(m.latencies_s, 99),
                coordinator_cpu=coord[0].cpu_percent if coord else None,
                workers_cpu=sum(p.cpu_percent for p in work) if work else None,
                coordinator_rss=coord[0].rss_bytes if coord else None,
                workers_rss=sum(p.rss_bytes for p in work) if work else None,
            )
        )
    return rows


def to_json(
    machine: dict[str, Any],
    settings: dict[str, Any],
    rows: Sequence[Row],
    profile: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run as one JSON-ready document: machine, settings, every measurement, profile."""
    results = []
    for r in rows:
        item = asdict(r.m)
        item.update(
            label=r.m.label,
            rows_per_s=r.rows_per_s,
            ratio_to_native=r.ratio,
            median_latency_s=r.median_s,
            p99_latency_s=r.p99_s,
        )
        results.append(item)
    return {
        "schema_version": SCHEMA_VERSION,
        "machine": machine,
        "settings": settings,
        "results": results,
        "profile": profile,
    }


def measurements_from_json(doc: dict[str, Any]) -> list[Measurement]:
    """The measurements of a results document (to redraw or compare an earlier run)."""
    names = set(Measurement.__dataclass_fields__)
    out = []
    for item in doc["results"]:
        fields = {k: v for k, v in item.items() if k in names}
        fields["processes"] = [ProcessStat(**p) for p in fields.get("processes", [])]
        out.append(Measurement(**fields))
    return out


RESULT_KEYS = {
    "workload": str,
    "case": str,
    "target": str,
    "rows": int,
    "seconds": float,
    "latencies_s": list,
    "processes": list,
}


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with a results document (empty when it has the expected shape)."""
    problems = []
    if doc.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {doc.get('schema_version')!r}")
    for key in ("machine", "settings", "results"):
        if key not in doc:
            problems.append(f"missing {key!r}")
    for i, item in enumerate(doc.get("results", [])):
        for key, kind in RESULT_KEYS.items():
            if not isinstance(item.get(key), kind):
                problems.append(f"results[{i}].{key} is not {kind.__name__}")
        if item.get("target") == CLUSTER and not isinstance(item.get("workers"), int):
            problems.append(f"results[{i}].workers missing for a cluster run")
    for key in ("cores", "memory_bytes", "python", "versions"):
        if key not in doc.get("machine", {}):
            problems.append(f"machine.{key} missing")
    return problems
