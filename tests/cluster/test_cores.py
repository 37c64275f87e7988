"""Each worker runs on its own share of the cores: disjoint slices, none left idle."""

from __future__ import annotations

import os

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

import laminardb
from laminardb.cluster.cores import core_sets, engine_threads

pytestmark = pytest.mark.timeout(60)


def test_sixteen_cores_two_workers_get_eight_each() -> None:
    assert core_sets(range(16), 2) == [list(range(8)), list(range(8, 16))]
    assert engine_threads(range(16), 2) == 8


def test_spare_cores_stay_free_for_the_coordinator() -> None:
    assert core_sets([0, 1, 2], 2) == [[1], [2]]
    assert core_sets([4, 5, 6, 7, 8], 2) == [[5, 6], [7, 8]]


def test_more_workers_than_cores_pins_nobody() -> None:
    assert core_sets([0, 1], 3) is None
    assert core_sets([], 1) is None
    assert engine_threads([0, 1], 3) == 1
    assert engine_threads([], 2) is None


@given(st.sets(st.integers(0, 255), min_size=1, max_size=64), st.integers(1, 64))
def test_slices_are_disjoint_equal_and_leave_less_than_one_share(cpus: set[int], n: int) -> None:
    sets = core_sets(list(cpus), n)
    if n > len(cpus):
        assert sets is None
        return
    assert sets is not None and len(sets) == n
    used = [c for s in sets for c in s]
    assert len(used) == len(set(used)) and set(used) <= cpus
    assert {len(s) for s in sets} == {len(cpus) // n}
    assert len(cpus) - len(used) < n


def _affinity(pid: int) -> list[int]:
    return sorted(psutil.Process(pid).cpu_affinity())


def test_workers_run_on_their_slices() -> None:
    mine = sorted(os.sched_getaffinity(0))
    with laminardb.open(workers=2) as db:
        got = [_affinity(w.pid) for w in db.workers()]
    expected = core_sets(mine, 2)
    assert got == (expected if expected else [mine, mine])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_lone_worker_gets_every_core() -> None:
    with laminardb.open(workers=1) as db:
        (worker,) = db.workers()
        assert _affinity(worker.pid) == sorted(os.sched_getaffinity(0))
        db.execute("CREATE SOURCE t (k BIGINT, v DOUBLE)")
        db.insert("t", {"k": [1, 2], "v": [0.5, 1.5]})
        assert db.sql("SELECT sum(v) AS s FROM t").to_arrow().column("s").to_pylist() == [2.0]
