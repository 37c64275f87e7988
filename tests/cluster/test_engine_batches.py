"""The worker's engine wrapper: a load's large pieces go in as they are, and every batch
counts towards the engine's limit of unconsumed batches (it hangs at the 2048th)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

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
