"""The worker's engine wrapper: a load's large pieces go in as they are, and every batch
counts towards the engine's limit of unconsumed batches (it hangs at the 2048th)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import engine as engine_mod
from workers.engine import Engine

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine() -> Any:
    e = Engine()
    e.execute("CREATE SOURCE t (a BIGINT)", "CREATE_SOURCE", "t")
    yield e
    e.close()


def _pieces(n: int, rows: int) -> pa.Table:
    return pa.concat_tables(
        [pa.table({"a": pa.array(range(i * rows, (i + 1) * rows), pa.int64())}) for i in range(n)]
    )


def test_large_pieces_count_one_place_each(engine: Any) -> None:
    engine.insert("t", _pieces(3, engine_mod.KEEP_CHUNKS_ROWS))
    assert engine.sources["t"].batches == 3
    engine.insert("t", _pieces(3, 10))  # small pieces: concatenated into one batch
    assert engine.sources["t"].batches == 4


def test_compaction_counts_every_batch(engine: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(engine_mod, "COMPACT_AFTER", 7)
    monkeypatch.setattr(engine_mod, "KEEP_CHUNKS_ROWS", 1)
    compactions = []
    original = engine._compact
    monkeypatch.setattr(engine, "_compact", lambda *a: (compactions.append(1), original(*a)))
    for _ in range(10):
        engine.insert("t", _pieces(3, 2))
        assert engine.sources["t"].batches <= 7
    assert len(compactions) >= 4  # 30 batches in all, at most 7 between compactions
    assert engine.query("SELECT count(*) AS n FROM t").column("n").to_pylist() == [60]


@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    threads=st.integers(1, 9),
    least=st.integers(1, 8),
)
def test_spread_cuts_batches_for_every_thread(sizes: list[int], threads: int, least: int) -> None:
    batches = [pa.record_batch({"a": pa.array(range(n), pa.int64())}) for n in sizes]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_mod, "SPREAD_ROWS", least)
        out = engine_mod.spread(batches, threads)
    assert pa.Table.from_batches(out).equals(pa.Table.from_batches(batches))  # same rows, order
    if threads < 2 or len(batches) >= threads:
        assert out == batches
        return
    possible = sum(max(1, n // least) for n in sizes)
    assert len(out) >= min(threads, possible)
    pieces = iter(out)
    for batch in batches:  # each batch is whole, or cut in pieces of at least `least` rows
        mine = [next(pieces)]
        while sum(p.num_rows for p in mine) < batch.num_rows:
            mine.append(next(pieces))
        assert len(mine) == 1 or all(p.num_rows >= least for p in mine)


def test_a_worker_holds_a_batch_per_thread(monkeypatch: Any) -> None:
    """A large insert, a compaction and a rebuild all leave at least one batch per thread."""
    monkeypatch.setattr(engine_mod, "SPREAD_ROWS", 10)
    e = Engine(threads=4)
    try:
        e.execute("CREATE SOURCE t (a BIGINT)", "CREATE_SOURCE", "t")
        e.insert("t", _pieces(1, 100))
        assert e.sources["t"].batches == 4
        e.insert("t", _pieces(1, 5))  # too small to cut
        assert e.sources["t"].batches == 5
        e._compact("t", e.sources["t"])
        assert e.sources["t"].batches == 4
        e.rebuild()
        assert e.sources["t"].batches == 4
        assert e.query("SELECT count(*) AS n, sum(a) AS s FROM t").to_pylist() == [
            {"n": 105, "s": sum(range(100)) + sum(range(5))}
        ]
    finally:
        e.close()


def test_a_source_a_stream_reads_is_never_cut(monkeypatch: Any) -> None:
    """Once the pipeline runs the engine keeps a source's last 2048 batches for queries: a
    streamed source takes one batch per insert, so it keeps as many rows as native would."""
    monkeypatch.setattr(engine_mod, "SPREAD_ROWS", 10)
    e = Engine(threads=4)
    try:
        e.execute("CREATE SOURCE t (a BIGINT)", "CREATE_SOURCE", "t")
        e.execute("CREATE SOURCE u (a BIGINT)", "CREATE_SOURCE", "u")
        e.execute("CREATE STREAM s AS SELECT a FROM t WHERE a > 1", "CREATE_STREAM", "s")
        assert e.streamed == {"t"}
        e.insert("t", _pieces(1, 100))
        e.insert("u", _pieces(1, 100))
        assert (e.sources["t"].batches, e.sources["u"].batches) == (1, 4)
        e.execute("DROP STREAM s", "DROP", "s")
        assert e.streamed == set()
        e.insert("t", _pieces(1, 100))
        assert e.sources["t"].batches == 5
    finally:
        e.close()
