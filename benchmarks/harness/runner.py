"""Runs the chosen workloads on every target and collects the measurements.

For each workload: one native instance first, then the cluster with each worker count, then
(batch job only) the outside references. Generated files live in one private temporary
folder, removed at the end whatever happens. A case that fails is recorded as an error and
the run goes on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import laminardb
from benchmarks.harness import batch, ingest, queries, streaming
from benchmarks.harness.model import CLUSTER, NATIVE, Measurement
from benchmarks.harness.profiler import Profile
from benchmarks.harness.targets import Context, Sizes, Target

WORKLOADS: dict[str, ModuleType] = {
    "ingest": ingest,
    "streaming": streaming,
    "queries": queries,
    "batch": batch,
}


def targets(worker_counts: Sequence[int]) -> list[Target]:
    return [Target(NATIVE)] + [Target(CLUSTER, n) for n in worker_counts]


def steps(names: Sequence[str], worker_counts: Sequence[int], sizes: Sizes) -> int:
    """How many cases the run will time (the progress bar's total)."""
    total = 0
    for name in names:
        module = WORKLOADS[name]
        total += len(module.cases(sizes)) * (1 + len(worker_counts))
        if hasattr(module, "reference_steps"):
            total += module.reference_steps(sizes)
    return total


@dataclass
class RunResult:
    measurements: list[Measurement]
    profile: dict[str, Any] | None


def warm_up() -> None:
    """Start and stop a 1-worker cluster so that no case pays for the first imports."""
    conn = laminardb.open(":memory:", workers=1)
    conn.close()


def run(
    names: Sequence[str],
    worker_counts: Sequence[int],
    sizes: Sizes,
    *,
    profile: bool = False,
    advance: Callable[[str], None] = lambda _d: None,
) -> RunResult:
    profiles: dict[str, Profile] = {}
    measurements: list[Measurement] = []
    warm_up()
    with tempfile.TemporaryDirectory(prefix=f"laminardb-{os.getpid()}-bench-") as workdir:
        ctx = Context(workdir=workdir, advance=advance)
        for name in names:
            module = WORKLOADS[name]
            if profile:
                ctx.profile = profiles[name] = Profile()
            for target in targets(worker_counts):
                measurements.extend(module.run(target, sizes, ctx))
            if hasattr(module, "references"):
                measurements.extend(module.references(sizes, ctx))
    if not profile:
        return RunResult(measurements, None)
    overall = Profile()
    for p in profiles.values():
        overall.merge(p)
    summary = overall.summary()
    summary["by_workload"] = {name: p.summary(top=5) for name, p in profiles.items()}
    return RunResult(measurements, summary)
