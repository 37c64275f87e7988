"""Pure parts of recovery: where a batch's rows went, and the log's index, retract and
failed writes (no worker processes)."""

from __future__ import annotations

import os
import types

import pyarrow as pa
import pytest

from laminardb.api.errors import IngestionError
from laminardb.cluster.recovery import Placement, RecoveringRouter, part_for
from laminardb.durability import log as log_module
from laminardb.durability.log import Log, RecordType


def table(n: int) -> pa.Table:
    return pa.table(
        {"id": pa.array(range(n), pa.int64()), "name": [f"n{i % 17}" for i in range(n)]}
    )


def router(n: int, split_rows: int = 10) -> RecoveringRouter:
    return RecoveringRouter(types.SimpleNamespace(workers=[None] * n), split_rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [1, 5, 39, 40, 41, 1000])
@pytest.mark.parametrize("target", ["keyed", "spread", "home"])
def test_part_for_rebuilds_exactly_the_part_the_router_made(n: int, rows: int, target: str):
    r = router(n)
    if target == "keyed":
        r.register("s", ("name",))
    elif target == "home":
        r.register("s", (), home=n - 1)
    else:
        r.register("s")
    for _ in range(n + 1):  # round-robin moves on between batches
        data = table(rows)
        parts = r._parts("s", data)
        for shard in range(n):
            expected = parts[shard]
            got = part_for(data, r.placement, shard, n)
            if expected is None:
                assert got.num_rows == 0
            else:
                assert got.equals(expected), (shard, r.placement)
        assert sum(part_for(data, r.placement, k, n).num_rows for k in range(n)) == rows


def test_log_index_read_and_retract(tmp_path) -> None:
    log = Log(tmp_path)
    list(log.replay())
    first = log.append_ddl("CREATE SOURCE s (id BIGINT)")
    batch = log.append_batch("s", table(3).select(["id"]), Placement(shard=1))
    assert [(r.type, r.source) for r in log.refs] == [(RecordType.DDL, ""), (RecordType.BATCH, "s")]
    records = list(log.read(log.refs))
    assert records[0][1].sql == "CREATE SOURCE s (id BIGINT)"
    assert records[1][1].table().num_rows == 3 and records[1][0].placement == Placement(shard=1)
    size = os.path.getsize(log.file_path)
    with pytest.raises(ValueError):
        log.retract(first)  # only the last record
    log.retract(batch)
    assert os.path.getsize(log.file_path) < size and log.refs == [first]
    log.close()
    again = Log(tmp_path)
    assert [r.sql for r in again.replay()] == ["CREATE SOURCE s (id BIGINT)"]
    assert again.dropped_bytes == 0
    again.close()


def test_failed_write_leaves_no_torn_record(tmp_path, monkeypatch) -> None:
    log = Log(tmp_path)
    list(log.replay())
    log.append_ddl("CREATE SOURCE s (id BIGINT)")
    size = os.path.getsize(log.file_path)
    calls = []

    def half_then_full(fd: int, data: memoryview) -> int:
        if not calls:  # the first write gets part of the record in, then the disk is full
            calls.append(1)
            return os.write(fd, data[:7])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log_module, "_write", half_then_full)
    with pytest.raises(IngestionError, match=r"source s.*No space left on device"):
        log.append_batch("s", table(2).select(["id"]))
    assert os.path.getsize(log.file_path) == size and len(log.refs) == 1
    monkeypatch.undo()
    log.append_ddl("DROP SOURCE s")
    log.close()
    again = Log(tmp_path)
    assert [r.sql for r in again.replay()] == ["CREATE SOURCE s (id BIGINT)", "DROP SOURCE s"]
    again.close()


def test_private_log_is_removed_at_close() -> None:
    log = Log.private()
    assert os.path.basename(log.dir).startswith(f"laminardb-{os.getpid()}-log-")
    log.append_ddl("CREATE SOURCE s (id BIGINT)")
    log.checkpoint()
    log.close()
    assert not os.path.exists(log.dir)
