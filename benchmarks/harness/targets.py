"""What a workload runs on: one native instance or the cluster with N workers, and sizes.

Every workload module has the same interface: `cases(sizes) -> list[str]` (for the progress
bar) and `run(target, sizes, ctx) -> list[Measurement]`, one measurement per case. `Context`
carries what the runner provides to each timed section: the profile (when `--profile`) and
the progress callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import laminardb_native

import laminardb
from benchmarks.harness.model import CLUSTER, NATIVE, Measurement
from benchmarks.harness.probes import Probe
from benchmarks.harness.profiler import Profile


@dataclass(frozen=True)
class Sizes:
    """How big each workload runs; `--quick` and the test's tiny run pick smaller ones."""

    name: str
    stream_rows: int  # Arrow rows per streaming case
    stream_batch: int  # rows per Arrow insert
    stream_dict_rows: int  # rows per list-of-dicts streaming case (100-row inserts)
    stream_keys: tuple[int, ...]
    query_rows: int
    query_repeat: int
    batch_rows: int
    ingest_rows: int  # Arrow rows of the ingest-to-queryable workload
    ingest_dict_rows: int
    timeout_s: float = 120.0


FULL = Sizes(
    "full",
    2_000_000,
    65_536,
    200_000,
    (1_000, 100_000),
    10_000_000,
    10,
    10_000_000,
    2_000_000,
    200_000,
)
QUICK = Sizes(
    "quick",
    300_000,
    65_536,
    30_000,
    (1_000, 100_000),
    1_000_000,
    5,
    300_000,
    1_000_000,
    100_000,
    timeout_s=30.0,
)
TINY = Sizes("tiny", 4_000, 1_000, 400, (100,), 5_000, 2, 2_000, 4_000, 400, timeout_s=30.0)
PRESETS = {s.name: s for s in (FULL, QUICK, TINY)}


@dataclass(frozen=True)
class Target:
    """One native instance (workers None) or the cluster with `workers` processes."""

    kind: str
    workers: int | None = None

    def open(self) -> Any:
        if self.kind == NATIVE:
            return laminardb_native.open(":memory:")
        return laminardb.open(":memory:", workers=self.workers or 1)

    def ddl(self, sql: str, keys: str) -> str:
        """The source DDL for this target: the cluster gets our PARTITION BY clause."""
        return f"{sql} PARTITION BY ({keys})" if self.kind == CLUSTER else sql


@dataclass
class Context:
    """The runner's services to a workload: profiling and progress."""

    workdir: str = "."  # a private temporary folder for generated files
    profile: Profile | None = None
    advance: Callable[[str], None] = lambda _description: None
    extras: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timed(self, conn: Any, target: Target) -> Iterator[Probe]:
        """Time a section on `conn`; the cluster's sections are profiled when asked."""
        probe = Probe(conn)
        sampling = (
            self.profile.sampling()
            if self.profile is not None and target.kind == CLUSTER
            else nullcontext()
        )
        with sampling, probe.timed():
            yield probe


def measurement(
    workload: str, case: str, target: Target, rows: int, probe: Probe, **extra: Any
) -> Measurement:
    """A measurement from a finished probe."""
    return Measurement(
        workload=workload,
        case=case,
        target=target.kind,
        workers=target.workers,
        rows=rows,
        seconds=probe.seconds,
        processes=probe.stats,
        shm_bytes=probe.shm_bytes,
        **extra,
    )


def failed(workload: str, case: str, target: Target, error: BaseException) -> Measurement:
    """The measurement of a case that raised: shown as an error, never as a figure."""
    return Measurement(
        workload=workload,
        case=case,
        target=target.kind,
        workers=target.workers,
        rows=0,
        seconds=0.0,
        error=f"{type(error).__name__}: {error}"[:300],
    )
