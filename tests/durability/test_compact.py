"""Log compaction on `checkpoint()`: smaller log, same answers, exact restarts, crash-safe at
every step (a crash injected through `compact.STEP_HOOK`)."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pyarrow as pa
import pytest

import laminardb
from laminardb.cluster.recovery import Placement
from laminardb.durability import compact
from laminardb.durability.log import COMPACT_NAME, Log, RecordType

pytestmark = pytest.mark.timeout(120)

KEYED = Placement(keys=("k",))


def content(path: str) -> tuple[list[str], dict[str, Counter[tuple[object, ...]]], list[int]]:
    """What a log means: its statements in order, the rows of each source, the watermarks."""
    log_ = Log(path)
    try:
        sql, rows, marks = [], {}, []
        for record in log_.replay():
            if record.type is RecordType.DDL:
                sql.append(record.sql)
            elif record.type is RecordType.WATERMARK:
                marks.append(record.watermark)
            else:
                table = record.table()
                rows.setdefault(record.source, Counter()).update(
                    zip(*table.to_pydict().values(), strict=True)
                )
        return sql, rows, marks
    finally:
        log_.close()


def fill(path: str) -> Log:
    log_ = Log(path)
    list(log_.replay_refs())
    log_.append_ddl("CREATE SOURCE s (k BIGINT, v BIGINT) PARTITION BY (k)")
    log_.append_ddl("CREATE SOURCE gone (x BIGINT)")
    for i in range(5):
        log_.append_batch("s", pa.table({"k": [i, i + 10], "v": [i, i]}), KEYED)
        log_.append_batch("gone", pa.table({"x": [i]}), Placement(shard=0))
    for i in range(3):
        log_.append_batch("s", pa.table({"k": [100 + i], "v": [1]}), KEYED)
    log_.append_watermark("s", 42)
    log_.append_batch("s", pa.table({"k": [7], "v": [7]}), Placement())
    log_.append_batch("s", pa.table({"k": [8], "v": [8]}), Placement())  # even: not merged
    log_.append_ddl("DROP SOURCE gone")
    return log_


def test_plan_drops_rows_of_dropped_sources_and_merges_adjacent_batches(tmp_path) -> None:
    log_ = fill(str(tmp_path))
    items = compact.plan(list(log_.read(list(log_.refs))))
    log_.close()
    kinds = [(i.type.name, i.source) for i in items]
    assert kinds == [
        ("DDL", ""),
        ("DDL", ""),
        ("BATCH", "s"),  # the eight keyed ones, adjacent once those of "gone" are left out
        ("WATERMARK", "s"),
        ("BATCH", "s"),
        ("BATCH", "s"),
        ("DDL", ""),
    ]


def test_compaction_keeps_the_meaning_and_shrinks_the_log(tmp_path) -> None:
    path = str(tmp_path)
    log_ = fill(path)
    log_.close()
    want = content(path)
    del want[1]["gone"]
    log_ = Log(path)
    list(log_.replay_refs())
    before, after = compact.run(log_)
    assert after < before
    log_.append_batch("s", pa.table({"k": [9], "v": [9]}), KEYED)  # appends go to the new log
    log_.close()
    want[1]["s"][(9, 9)] += 1
    assert content(path) == want


@pytest.mark.parametrize("step", ["written", "renamed", "synced"])
def test_a_crash_at_any_step_leaves_a_whole_log(tmp_path, monkeypatch, step: str) -> None:
    path = str(tmp_path)
    log_ = fill(path)
    log_.close()
    want = content(path)
    compacted = (want[0], {"s": want[1]["s"]}, want[2])

    def crash(name: str) -> None:
        if name == step:
            raise SystemExit(f"crash after {name}")

    monkeypatch.setattr(compact, "STEP_HOOK", crash)
    log_ = Log(path)
    list(log_.replay_refs())
    with pytest.raises(SystemExit):
        compact.run(log_)
    log_.close()
    assert content(path) == (want if step == "written" else compacted)
    assert not os.path.exists(os.path.join(path, COMPACT_NAME))


def test_a_crash_while_writing_leaves_the_old_log(tmp_path) -> None:
    path = str(tmp_path)
    fill(path).close()
    want = content(path)
    with open(os.path.join(path, COMPACT_NAME), "wb") as f:  # torn compacted log
        f.write(b"LDBR\x01garbage")
    assert content(path) == want  # opening removes it, the old log is whole
    assert not os.path.exists(os.path.join(path, COMPACT_NAME))


QUERY = "SELECT k, count(*) AS n, sum(v) AS t FROM s GROUP BY k ORDER BY k LIMIT 1000"


def test_checkpoint_compacts_and_restarts_and_reopens_stay_exact(tmp_path) -> None:
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=3) as db:
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT) PARTITION BY (k)")
        db.execute("CREATE SOURCE gone (x BIGINT)")
        db.insert("gone", {"x": list(range(100))})
        with db.writer("s") as writer:
            for i in range(20):
                writer.insert({"k": [i % 7, (i + 3) % 7], "v": [i, 2 * i]})
                writer.flush()  # one batch (one log record) each
        db.execute("DROP SOURCE gone")
        want = db.sql(QUERY).to_arrow().to_pylist()
        records = len(db._durable.refs)
        size = os.path.getsize(os.path.join(path, "log"))
        db.checkpoint()
        assert len(db._durable.refs) < records
        assert os.path.getsize(os.path.join(path, "log")) < size
        assert db.sql(QUERY).to_arrow().to_pylist() == want
        victim = db._cluster.workers[1].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert db.sql(QUERY).to_arrow().to_pylist() == want  # rebuilt from the compacted log
        db.insert("s", {"k": [1], "v": [1000]})
        want = db.sql(QUERY).to_arrow().to_pylist()
    with laminardb.open(path, workers=2) as db:
        assert db.sql(QUERY).to_arrow().to_pylist() == want
