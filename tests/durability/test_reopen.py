"""`open(path)`: what was logged comes back on reopen, with any worker count; one opener."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import laminardb

pytestmark = pytest.mark.timeout(120)

QUERIES = [
    "SELECT id, name, price FROM trades ORDER BY id LIMIT 10000",
    "SELECT name, COUNT(*) AS n, SUM(price) AS total FROM trades GROUP BY name ORDER BY name LIMIT 10000",
    "SELECT v FROM events ORDER BY v LIMIT 10000",
    "SELECT COUNT(*) AS n FROM events",
]


def answers(conn: laminardb.Connection) -> list[list[dict[str, object]]]:
    return [conn.sql(q).to_arrow().to_pylist() for q in QUERIES]


def populate(path: str) -> list[list[dict[str, object]]]:
    with laminardb.open(path, workers=2) as conn:
        conn.execute(
            "CREATE SOURCE trades (id BIGINT, name VARCHAR, price DOUBLE) PARTITION BY (name)"
        )
        conn.execute("CREATE SOURCE events (v BIGINT)")
        conn.execute("CREATE SOURCE dropped (x BIGINT)")
        conn.insert("dropped", {"x": [1]})
        conn.execute("DROP SOURCE dropped")
        conn.insert(
            "trades",
            {
                "id": list(range(100)),
                "name": [f"n{i % 7}" for i in range(100)],
                "price": [i * 0.5 for i in range(100)],
            },
        )
        conn.insert("events", {"v": list(range(50))})
        conn.execute("INSERT INTO events VALUES (1000), (1001)")
        conn.execute("INSERT INTO trades VALUES (500, 'z', 1.25)")
        conn.insert("events", [{"v": 2000}])
        before = answers(conn)
    assert len(before[0]) == 101 and before[3] == [{"n": 53}]
    return before


def test_reopen_with_the_same_and_other_worker_counts(tmp_path):
    path = str(tmp_path / "db")
    before = populate(path)
    for workers in (2, 3):
        with laminardb.open(path, workers=workers) as conn:
            assert answers(conn) == before, workers
            assert {s.name for s in conn.sources()} == {"trades", "events"}
    # Rows added after a reopen are kept too, and the old ones only once.
    with laminardb.open(path, workers=3) as conn:
        conn.insert("events", {"v": [3000]})
    with laminardb.open(path, workers=1) as conn:
        assert conn.sql("SELECT COUNT(*) AS n FROM events").to_arrow().to_pylist() == [{"n": 54}]


def test_a_second_open_fails_clearly(tmp_path):
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=1):
        with pytest.raises(laminardb.ConnectionError, match="in use") as info:
            laminardb.open(path, workers=1)
        assert os.path.abspath(path) in str(info.value)
    laminardb.open(path, workers=1).close()  # free again after close


def test_checkpoint_on_a_path_needs_no_storage_dir(tmp_path):
    with laminardb.open(str(tmp_path / "db"), workers=1) as conn:
        assert conn.is_checkpoint_enabled
        conn.execute("CREATE SOURCE s (x BIGINT)")
        conn.insert("s", {"x": [1, 2]})
        assert conn.checkpoint() is not None


def test_kill_9_keeps_what_was_checkpointed(tmp_path):
    path = str(tmp_path / "db")
    script = textwrap.dedent(
        f"""
        import laminardb
        conn = laminardb.open({path!r}, workers=2)
        conn.execute("CREATE SOURCE s (k VARCHAR, x BIGINT) PARTITION BY (k)")
        conn.execute("CREATE SOURCE u (x BIGINT)")
        conn.insert("s", {{"k": [str(i % 5) for i in range(1000)], "x": list(range(1000))}})
        conn.insert("u", {{"x": list(range(10))}})
        conn.execute("INSERT INTO u VALUES (99)")
        conn.checkpoint()
        print(" ".join(str(w.pid) for w in conn.workers()), flush=True)
        import time
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        worker_pids = [int(p) for p in child.stdout.readline().split()]
        assert len(worker_pids) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    deadline = time.monotonic() + 10  # its workers notice the parent is gone and exit
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in worker_pids):
        time.sleep(0.05)
    with laminardb.open(path, workers=3) as conn:
        got = conn.sql("SELECT COUNT(*) AS n, SUM(x) AS t FROM s").to_arrow().to_pylist()
        assert got == [{"n": 1000, "t": sum(range(1000))}]
        assert conn.sql("SELECT x FROM u ORDER BY x LIMIT 100").to_arrow().column(
            0
        ).to_pylist() == [
            *range(10),
            99,
        ]
