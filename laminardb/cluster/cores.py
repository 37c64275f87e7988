"""Which CPU cores each worker may run on.

Each worker gets its own slice of the cores this process may use, so that its engine plans
for (and its Arrow thread pool sizes itself to) the cores it really has. A worker that sees
every core splits each query into that many partitions and then competes with its siblings
for them; a worker pinned to a single core of a 16-core machine leaves 15 idle. Cores left
over when they do not divide evenly stay free for the coordinator. With more workers than
cores nobody is pinned and the scheduler balances them.
"""

from __future__ import annotations

from collections.abc import Sequence


def core_sets(cpus: Sequence[int], workers: int) -> list[list[int]] | None:
    """Disjoint, equal slices of `cpus`, one per worker, or None when they cannot be had."""
    if workers < 1 or len(cpus) < workers:
        return None
    ordered = sorted(cpus)
    per, spare = divmod(len(ordered), workers)
    return [ordered[spare + k * per : spare + (k + 1) * per] for k in range(workers)]


def engine_threads(cpus: Sequence[int], workers: int) -> int | None:
    """Engine threads for each worker: its share of the cores (None when unknown)."""
    if not cpus:
        return None
    return max(1, len(cpus) // max(1, workers))
