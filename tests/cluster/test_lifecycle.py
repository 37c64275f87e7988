"""Worker processes: started, reported, stopped; deaths of workers and of the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pyarrow as pa
import pytest

import laminardb

pytestmark = pytest.mark.timeout(90)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_open_reports_workers_and_close_stops_them() -> None:
    db = laminardb.open(workers=2)
    infos = db.workers()
    assert [w.shard for w in infos] == [0, 1]
    assert all(w.alive and w.rss_bytes > 0 for w in infos)
    pids = [w.pid for w in infos]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    db.close()
    assert db.is_closed
    assert all(
        not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids
    )
    with pytest.raises(laminardb.ConnectionError, match="closed"):
        db.sql("SELECT 1")
    db.close()  # twice is fine


def test_with_block_closes() -> None:
    with laminardb.open(workers=1) as db:
        pid = db.workers()[0].pid
        assert repr(db) == "Connection(open)"
    assert db.is_closed and repr(db) == "Connection(closed)"
    assert wait_until(lambda: not psutil.pid_exists(pid))


def test_default_worker_count_is_usable_cores() -> None:
    assert laminardb.default_workers() == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="at least 1"):
        laminardb.open(workers=0)


def test_killed_worker_is_a_clear_error_not_a_hang() -> None:
    with laminardb.open(workers=2) as db:
        db.execute("CREATE SOURCE k (id BIGINT, v DOUBLE)")
        victim = db.workers()[1]
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_until(lambda: not db.workers()[1].alive)
        with pytest.raises(laminardb.ConnectionError, match=r"worker 1 \(pid \d+\)") as info:
            db.sql("SELECT count(*) FROM k")
        assert info.value.shard == 1
        assert db.workers()[0].alive


def test_interpreter_exit_stops_workers(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import laminardb
        db = laminardb.open(workers=2)
        print(" ".join(str(w.pid) for w in db.workers()), flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=5)


def test_parent_killed_workers_exit_within_two_seconds() -> None:
    script = textwrap.dedent(
        """
        import sys, time, laminardb
        db = laminardb.open(workers=2)
        print(" ".join(str(w.pid) for w in db.workers()), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        assert wait_until(lambda: all(gone(p) for p in pids), timeout=5)
        assert time.monotonic() - killed_at < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"laminardb-{proc.pid}-")]
    # Its endpoint folder (kept while a cluster is open, for restarts) goes with the next open.
    with laminardb.open(workers=1):
        root = tempfile.gettempdir()
        assert not [n for n in os.listdir(root) if n.startswith(f"laminardb-{proc.pid}-")]


def test_killed_worker_of_a_persistent_database_is_restarted(tmp_path) -> None:
    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute("CREATE SOURCE k (id BIGINT, v DOUBLE)")
        db.insert("k", {"id": list(range(10)), "v": [0.5] * 10})
        db.insert("k", {"id": list(range(10, 20)), "v": [0.5] * 10})
        db.sql("SELECT 1")
        victim = db.workers()[1].pid
        os.kill(victim, signal.SIGKILL)
        # The monitor replaces it without any call being made...
        assert wait_until(lambda: db.workers()[1].pid != victim and db.workers()[1].alive)
        # ...with its rows: nothing lost, nothing twice.
        assert db.sql("SELECT count(*), sum(id) FROM k").fetchall() == [(20, 190)]
        assert db._cluster.restarts == [0, 1]


def test_two_connections_are_independent() -> None:
    with laminardb.open(workers=1) as a, laminardb.open(workers=1) as b:
        a.execute("CREATE SOURCE only_a (x BIGINT)")
        a.insert("only_a", pa.table({"x": pa.array([1, 2], pa.int64())}))
        assert a.sql("SELECT count(*) FROM only_a").fetchall() == [(2,)]
        with pytest.raises(laminardb.QueryError):
            b.sql("SELECT count(*) FROM only_a")


def test_thousands_of_engine_batches_never_hang_and_lose_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the engine's 2048-batch limit, with and without a stream reading the source."""
    # Only the explicit flushes ship, so each insert is one engine batch even on a slow machine.
    monkeypatch.setattr("laminardb.ingest.router.FLUSH_DELAY_S", 3600.0)
    with laminardb.open(workers=1) as db:
        db.execute("CREATE SOURCE plain (x BIGINT)")
        db.execute("CREATE SOURCE watched (x BIGINT)")
        db.execute("CREATE STREAM watched_rows AS SELECT x FROM watched")
        for name in ("plain", "watched"):
            writer = db.writer(name)
            for i in range(2_100):
                writer.insert({"x": [i]})
                assert writer.flush() == 1  # one engine batch per call
        assert db.sql("SELECT count(*), sum(x) FROM plain").fetchall() == [
            (2_100, 2_100 * 2_099 // 2)
        ]
        # A consumed source keeps its last 2048 batches for queries, as one native instance does.
        assert db.sql("SELECT count(*) FROM watched").fetchall()[0][0] >= 2_048


def test_open_imports_what_the_first_query_needs() -> None:
    """The sqlglot dialect and Arrow's grouping engine (about 35 ms the first query paid)
    are imported while the workers start; the thread that imports them is gone once
    `open()` returns."""
    script = textwrap.dedent(
        """
        import sys, threading, laminardb
        from laminardb.plan import statements
        wanted = statements.FIRST_QUERY_MODULES
        assert not any(m in sys.modules for m in wanted)
        with laminardb.open(workers=1):
            loaded = all(m in sys.modules for m in wanted)
            alive = any(t.name == "laminardb-imports" for t in threading.enumerate())
            print(loaded, alive)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
