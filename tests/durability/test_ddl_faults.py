"""DDL under a worker's death, and watermarks across restarts and reopens.

A worker killed in the middle of a statement (after worker 0 applied it, before or while the
others get it) must leave every worker's catalog equal: the statement is logged before it
runs, so it is kept as applied and the restarted worker replays it. The fault is injected
between workers by wrapping the cluster's send (no timing).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import laminardb
from laminardb.wire import arrow_ipc, protocol

pytestmark = pytest.mark.timeout(120)


def catalogs(db: laminardb.Connection) -> list[tuple[list[str], list[list[str]]]]:
    """Per worker: its sources, and the column names of each."""
    cluster = db._cluster
    out = []
    for worker in cluster.workers:
        shard = worker.shard
        names = sorted(
            n for n, _ in cluster.request(shard, protocol.Call(cluster.new_rid(), "sources")).value
        )
        columns = []
        for name in names:
            reply = cluster.request(shard, protocol.Call(cluster.new_rid(), "schema", [name]))
            columns.append(arrow_ipc.loads(reply.data.buffer).schema.names)
        out.append((names, columns))
    return out


def kill_when_sent(db: laminardb.Connection, sql: str, victim: int, before: bool) -> list[int]:
    """Wrap `db`'s cluster so that `sql` sent to worker `victim` kills it (before the send,
    so it never sees the statement, or right after, so it may or may not apply it)."""
    cluster = db._cluster
    send: Callable[..., None] = cluster.send
    killed: list[int] = []

    def wrapped(shard: int, request: Any, data: Any = None) -> None:
        hit = (
            shard == victim
            and not killed
            and isinstance(request, protocol.Execute)
            and request.sql == sql
        )
        if hit and before:
            kill(db, shard, killed)
        send(shard, request, data)
        if hit and not before:
            kill(db, shard, killed)

    cluster.send = wrapped  # type: ignore[method-assign]
    return killed


def kill(db: laminardb.Connection, shard: int, killed: list[int]) -> None:
    process = db._cluster.workers[shard].process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    killed.append(process.pid)


@pytest.fixture
def db(tmp_path) -> Iterator[laminardb.Connection]:
    with laminardb.open(str(tmp_path / "db"), workers=3) as conn:
        conn.execute("CREATE SOURCE a (id BIGINT, v BIGINT) PARTITION BY (id)")
        conn.execute("CREATE SOURCE b (x BIGINT)")
        conn.insert("a", {"id": list(range(40)), "v": list(range(40))})
        conn.insert("b", {"x": [1, 2, 3]})
        yield conn


# (ALTER empties the source in the native engine too: 0 rows after it.)
STATEMENTS = [
    ("DROP SOURCE b", (["a"], [["id", "v"]])),
    ("ALTER SOURCE a ADD COLUMN w VARCHAR", (["a", "b"], [["id", "v", "w"], ["x"]])),
    ("CREATE SOURCE c (z BIGINT)", (["a", "b", "c"], [["id", "v"], ["x"], ["z"]])),
]


@pytest.mark.parametrize("before", [True, False], ids=["before-send", "after-send"])
@pytest.mark.parametrize("sql,want", STATEMENTS, ids=["drop", "alter", "create"])
def test_worker_killed_mid_statement_leaves_catalogs_equal(
    tmp_path, db: laminardb.Connection, sql: str, want: Any, before: bool
) -> None:
    killed = kill_when_sent(db, sql, victim=2, before=before)
    db.execute(sql)  # the death is absorbed: kept as applied, the worker replays it
    assert killed, "the fault was not injected"
    # (after-send: the worker may have answered before it died; the next call restarts it)
    rows = [{"n": 0, "s": None}] if sql.startswith("ALTER") else [{"n": 40, "s": 780}]
    assert db.sql("SELECT count(*) AS n, sum(v) AS s FROM a").to_arrow().to_pylist() == rows
    assert db._cluster.workers[2].process.pid not in killed  # restarted
    assert catalogs(db) == [(want[0], want[1])] * 3
    db.close()
    with laminardb.open(str(tmp_path / "db"), workers=2) as again:
        assert catalogs(again) == [(want[0], want[1])] * 2


def test_worker_zero_killed_as_a_statement_is_sent_runs_it_once_restarted(
    db: laminardb.Connection,
) -> None:
    """Worker 0 runs a statement first: dead then, no engine has it and the log gives it
    back, so the statement is sent again to the rebuilt worker and applied everywhere."""
    killed = kill_when_sent(db, "DROP SOURCE b", victim=0, before=True)
    db.execute("DROP SOURCE b")
    assert killed
    assert db._cluster.workers[0].process.pid not in killed  # restarted
    assert catalogs(db) == [(["a"], [["id", "v"]])] * 3


WM_SQL = "CREATE SOURCE t (id BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '0' SECOND)"


def marks(db: laminardb.Connection) -> list[int]:
    cluster = db._cluster
    return [
        r.value
        for r in cluster.broadcast(lambda rid: protocol.Call(rid, "watermark", ["t", -(2**63)]))
    ]


def test_writer_watermark_survives_restart_and_reopen(tmp_path) -> None:
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=2) as db:
        db.execute(WM_SQL)
        with db.writer("t") as w:
            w.insert({"id": [1, 2], "ts": [10, 20]})
            w.watermark(5_000)
        assert marks(db) == [5_000, 5_000]
        victim = db._cluster.workers[1].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert db.sql("SELECT count(*) AS n FROM t").to_arrow().to_pylist() == [{"n": 2}]
        assert marks(db) == [5_000, 5_000]  # the restarted worker replayed it
    with laminardb.open(path, workers=3) as db:
        assert marks(db) == [5_000] * 3
        assert db.writer("t").current_watermark == 5_000  # what the API shows of it
        assert db.sql("SELECT count(*) AS n FROM t").to_arrow().to_pylist() == [{"n": 2}]


def test_stopped_worker_applies_the_statement_when_it_resumes(tmp_path) -> None:
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=2) as db:
        db.execute("CREATE SOURCE b (x BIGINT)")
        cluster = db._cluster
        patient = cluster.options
        victim = cluster.workers[1].process.pid
        os.kill(victim, signal.SIGSTOP)
        try:
            cluster.options = dataclasses.replace(patient, request_timeout_s=1.5)
            with pytest.raises(laminardb.ConnectionError, match="do not run it again"):
                db.execute("DROP SOURCE b")
        finally:
            cluster.options = patient  # (a loaded machine may be slow to answer afterwards)
            os.kill(victim, signal.SIGCONT)
        assert catalogs(db) == [([], [])] * 2  # its queue held the statement
    with laminardb.open(path, workers=2) as db:
        assert catalogs(db) == [([], [])] * 2


@pytest.mark.slow
def test_statements_with_a_kill_each_many_rounds(tmp_path) -> None:
    """30 statements (CREATE, ALTER, DROP), each with a random worker killed before or after
    it is sent to that worker; the catalogs agree after each, and after a reopen."""
    import random

    rng = random.Random(6)
    path = str(tmp_path / "db")
    kills = 0
    with laminardb.open(path, workers=3) as db:
        for i in range(10):
            name = f"c{i}"
            for sql in (
                f"CREATE SOURCE {name} (z BIGINT)",
                f"ALTER SOURCE {name} ADD COLUMN y VARCHAR",
                f"DROP SOURCE {name}" if i % 2 else f"CREATE SOURCE {name}_keep (z BIGINT)",
            ):
                cluster = db._cluster
                original = cluster.send
                killed = kill_when_sent(db, sql, rng.randrange(1, 3), rng.random() < 0.5)
                db.execute(sql)
                cluster.send = original  # type: ignore[method-assign]
                kills += len(killed)
                db.sql("SELECT 1")  # restarts a worker that died after answering
                seen = catalogs(db)
                assert seen == [seen[0]] * 3, sql
        final = catalogs(db)[0]
    print(f"\nDDL rounds: 30 statements, {kills} workers killed, catalogs equal after each")
    with laminardb.open(path, workers=2) as db:
        assert catalogs(db) == [final] * 2


@pytest.mark.parametrize(
    "statement",
    ["UPDATE kv SET v = 'y' WHERE id = 1", "CREATE SOURCE later (x BIGINT)"],
)
def test_a_statement_finding_worker_0_just_dead_waits_for_its_restart(tmp_path, statement) -> None:
    """Worker 0 runs every statement first; dead just before (the kill not noticed yet), the
    statement reached no engine, so it is sent again once worker 0 is rebuilt from the log."""
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=2) as db:
        db.execute("CREATE TABLE kv (id BIGINT PRIMARY KEY, v VARCHAR)")
        db.execute("INSERT INTO kv VALUES (1, 'x')")
        cluster = db._cluster
        send = cluster.request
        victim = cluster.workers[0].process

        def dies_first(shard: int, request: Any) -> Any:
            if shard == 0 and victim.poll() is None:
                victim.kill()
                victim.wait(10)
            return send(shard, request)

        cluster.request = dies_first  # type: ignore[method-assign]
        db.execute(statement)
        cluster.request = send  # type: ignore[method-assign]
        assert cluster.workers[0].process is not victim  # restarted
        expected = db.sql("SELECT id, v FROM kv").fetchall(), sorted(db.list_tables())
    with laminardb.open(path, workers=3) as db:
        assert (db.sql("SELECT id, v FROM kv").fetchall(), sorted(db.list_tables())) == expected
    assert expected[0] == ([(1, "y")] if statement.startswith("UPDATE") else [(1, "x")])
