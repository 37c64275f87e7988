"""Loads on a logged connection (`open(path)`, `recovery=True`): the workers read in parallel,
every row is logged as one batch record before the commit, a reopen with another worker count
and a restarted worker get exactly the loaded rows back, and a bad file logs nothing."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from files_support import COLUMNS, fresh, native_rows, sample, shm_of_ours, write

import laminardb
from laminardb.cluster.recovery import Placement
from laminardb.durability.log import RecordType
from laminardb.files import splits
from laminardb.wire import protocol

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def small_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut even small test files into several byte ranges (one per worker)."""
    monkeypatch.setattr(splits, "MIN_SPLIT_BYTES", 1)


def _batches(conn: laminardb.Connection) -> list[Placement]:
    log_ = conn._durable
    assert log_ is not None
    return [r.placement for r in log_.refs if r.type is RecordType.BATCH]


@pytest.mark.parametrize("keyed", [False, True], ids=["spread", "keyed"])
def test_logged_load_is_parallel_and_survives_reopen(tmp_path: Path, keyed: bool) -> None:
    data = sample(300, seed=3)
    path = write(data, str(tmp_path / "in.csv"), "csv")
    name = fresh("lg")
    ddl = f"CREATE SOURCE {name} ({COLUMNS})"
    sql = f"SELECT device, count(*), sum(n), min(ts) FROM {name} GROUP BY device"
    expected = Counter(native_rows(ddl, name, data, sql))
    with laminardb.open(str(tmp_path / "db"), workers=2) as conn:
        conn.execute(ddl + (" PARTITION BY (device)" if keyed else ""))
        assert conn.load(name, path) == 300
        (placement,) = _batches(conn)  # one record for the whole load
        if keyed:
            assert placement == Placement(keys=("device",))
        else:
            assert sum(placement.counts) == 300 and all(placement.counts)  # both read a share
        assert Counter(conn.sql(sql).fetchall()) == expected
    with laminardb.open(str(tmp_path / "db"), workers=3) as conn:
        assert Counter(conn.sql(sql).fetchall()) == expected
    assert shm_of_ours() == []


@pytest.mark.parametrize("keyed", [False, True], ids=["spread", "keyed"])
def test_restarted_worker_gets_its_loaded_rows_back(tmp_path: Path, keyed: bool) -> None:
    data = sample(200, seed=5)
    path = write(data, str(tmp_path / "in.parquet"), "parquet")
    name = fresh("lr")
    ddl = f"CREATE SOURCE {name} ({COLUMNS})"
    sql = f"SELECT * FROM {name}"
    expected = Counter(native_rows(ddl, name, data, sql))
    with laminardb.open(":memory:", workers=2, recovery=True) as conn:
        conn.execute(ddl + (" PARTITION BY (device)" if keyed else ""))
        conn.insert(name, sample(10, seed=9))
        assert conn.load(name, path) == 200
        process = conn._cluster.workers[1].process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        rows = Counter(conn.sql(sql).fetchall())  # waits for the restart and the replay
        assert rows == expected + Counter(native_rows(ddl, name, sample(10, seed=9), sql))
    assert shm_of_ours() == []


def test_bad_file_logs_nothing(tmp_path: Path) -> None:
    good = write(sample(50), str(tmp_path / "a.csv"), "csv")
    bad = tmp_path / "b.csv"
    bad.write_text(Path(good).read_text() + "not-a-time,x,1,2,true\n")
    name = fresh("lb")
    with laminardb.open(str(tmp_path / "db"), workers=2) as conn:
        conn.execute(f"CREATE SOURCE {name} ({COLUMNS})")
        with pytest.raises(laminardb.SchemaError, match=r"b\.csv"):
            conn.load(name, str(tmp_path / "*.csv"))
        assert _batches(conn) == []
        assert conn.sql(f"SELECT count(*) FROM {name}").fetchall() == [(0,)]
        assert conn.load(name, good) == 50
    with laminardb.open(str(tmp_path / "db"), workers=2) as conn:
        assert conn.sql(f"SELECT count(*) FROM {name}").fetchall() == [(50,)]
    assert shm_of_ours() == []


@pytest.mark.parametrize("phase", ["read", "commit"])
def test_worker_killed_during_a_logged_load(tmp_path: Path, phase: str) -> None:
    """Killed as its share is requested (nothing logged yet: the load runs again on the
    restarted worker) or as the commit is sent (logged: the restarted worker replays it)."""
    data = sample(150, seed=7)
    path = write(data, str(tmp_path / "in.csv"), "csv")
    name = fresh("lk")
    ddl = f"CREATE SOURCE {name} ({COLUMNS})"
    sql = f"SELECT * FROM {name}"
    with laminardb.open(str(tmp_path / "db"), workers=2) as conn:
        conn.execute(ddl + " PARTITION BY (device)")
        cluster = conn._cluster
        send = cluster.send
        killed: list[int] = []
        kind = protocol.ReadFiles if phase == "read" else protocol.Commit

        def wrapped(shard: int, request: Any, data: Any = None) -> None:
            if shard == 1 and not killed and isinstance(request, kind):
                process = cluster.workers[1].process
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                killed.append(process.pid)
            send(shard, request, data)

        cluster.send = wrapped  # type: ignore[method-assign]
        assert conn.load(name, path) == 150
        assert killed and cluster.workers[1].process.pid != killed[0]  # restarted
        assert len(_batches(conn)) == 1  # logged once, whichever attempt wrote it
        assert Counter(conn.sql(sql).fetchall()) == Counter(native_rows(ddl, name, data, sql))
    with laminardb.open(str(tmp_path / "db"), workers=2) as conn:
        assert Counter(conn.sql(sql).fetchall()) == Counter(native_rows(ddl, name, data, sql))
    assert shm_of_ours() == []
