"""Fault injection: workers killed (-9) at random points of ingestion, stopped (SIGSTOP), a
full disk under the log and a full /dev/shm. After every round the cluster's answers must be
those of one native instance fed the acknowledged rows: rows lost 0, rows duplicated 0.

Run `pytest tests/durability/test_faults.py -s` to see the rounds/rows figures; the `slow`
marker runs 50 rounds with 3 workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import laminardb_native
import pyarrow as pa
import pytest

import laminardb
from laminardb.durability import log as log_module

pytestmark = pytest.mark.timeout(120)

DDL = [
    "CREATE SOURCE k (id BIGINT, name VARCHAR, v BIGINT) PARTITION BY (name)",
    "CREATE SOURCE r (id BIGINT, v BIGINT)",
]
QUERIES = [
    "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS s, sum(v) AS t FROM k",
    "SELECT name, count(*) AS n, sum(v) AS t FROM k GROUP BY name ORDER BY name LIMIT 1000",
    "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS s, min(id) AS lo, "
    "max(id) AS hi FROM r",
]


@dataclass
class Oracle:
    """One native instance fed the acknowledged rows (one insert per source per round)."""

    conn: object = field(default_factory=lambda: laminardb_native.open(":memory:"))
    ids: dict[str, list[int]] = field(default_factory=lambda: {"k": [], "r": []})

    def __post_init__(self) -> None:
        for ddl in DDL:
            self.conn.execute(ddl.split(" PARTITION BY")[0])  # type: ignore[attr-defined]

    def feed(self, source: str, tables: list[pa.Table]) -> None:
        if tables:
            table = pa.concat_tables(tables)
            self.conn.insert(source, table.combine_chunks().to_batches()[0])  # type: ignore[attr-defined]
            self.ids[source].extend(table.column("id").to_pylist())

    def answers(self) -> list[list[dict[str, object]]]:
        return [self.conn.sql(q).to_arrow().to_pylist() for q in QUERIES]  # type: ignore[attr-defined]


def answers(db: laminardb.Connection) -> list[list[dict[str, object]]]:
    return [db.sql(q).to_arrow().to_pylist() for q in QUERIES]


def check(db: laminardb.Connection, oracle: Oracle) -> None:
    """Same answers as the oracle, and exactly the acknowledged ids (none lost, none twice)."""
    assert answers(db) == oracle.answers()
    for source in ("k", "r"):
        got = db.sql(f"SELECT id FROM {source}").to_arrow().column("id").to_pylist()
        assert sorted(got) == sorted(oracle.ids[source]), f"{source}: lost or duplicated rows"


def batch(source: str, start: int, n: int, rng: random.Random) -> pa.Table:
    ids = list(range(start, start + n))
    values = [rng.randrange(1000) for _ in ids]
    if source == "r":
        return pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array(values, pa.int64())})
    names = [f"n{rng.randrange(23)}" for _ in ids]
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "name": names, "v": pa.array(values, pa.int64())}
    )


@dataclass
class Figures:
    rounds: int = 0
    kills: int = 0
    restarts: int = 0
    rows_acknowledged: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0


def kill_rounds(
    db: laminardb.Connection, oracle: Oracle, rounds: int, seed: int, start_id: int = 0
) -> Figures:
    """Each round: inserts of random sizes while one random worker is killed at a random
    moment (between or inside the calls); then the answers are checked."""
    rng = random.Random(seed)
    figures = Figures()
    next_id = start_id
    n_workers = len(db.workers())
    for _ in range(rounds):
        acked: dict[str, list[pa.Table]] = {"k": [], "r": []}
        inserts = rng.randrange(4, 16)
        kill_at = rng.randrange(inserts)
        victim = rng.randrange(n_workers)
        timer: threading.Timer | None = None
        for i in range(inserts):
            if i == kill_at:
                pid = db.workers()[victim].pid
                timer = threading.Timer(rng.uniform(0, 0.02), os.kill, (pid, signal.SIGKILL))
                timer.start()
                figures.kills += 1
            source = rng.choice(("k", "r"))
            rows = batch(source, next_id, rng.choice((1, 7, 50, 400, 3000)), rng)
            next_id += rows.num_rows
            db.insert(source, rows)  # no error expected: a dead worker is rebuilt meanwhile
            acked[source].append(rows)
            if rng.random() < 0.3:
                db.sql("SELECT count(*) FROM r")  # ship now, sometimes mid-kill
        assert timer is not None
        timer.join()
        for source, tables in acked.items():
            oracle.feed(source, tables)
            figures.rows_acknowledged += sum(t.num_rows for t in tables)
        check(db, oracle)
        figures.rounds += 1
    figures.restarts = sum(db._cluster.restarts)
    for source in ("k", "r"):
        got = db.sql(f"SELECT id FROM {source}").to_arrow().column("id").to_pylist()
        figures.rows_lost += len(set(oracle.ids[source]) - set(got))
        figures.rows_duplicated += len(got) - len(set(got))
    return figures


def report(name: str, figures: Figures) -> None:
    print(f"\nfault injection {name}: {json.dumps(figures.__dict__)}")


def open_db(path: str, workers: int) -> Iterator[laminardb.Connection]:
    db = laminardb.open(path, workers=workers)
    try:
        yield db
    finally:
        db.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_random_workers_during_ingestion_with_a_path(tmp_path, seed: int) -> None:
    path = str(tmp_path / "db")
    oracle = Oracle()
    with laminardb.open(path, workers=2) as db:
        for ddl in DDL:
            db.execute(ddl)
        figures = kill_rounds(db, oracle, rounds=2, seed=seed)
    report(f"path, 2 workers, seed {seed}", figures)
    assert figures.rows_lost == 0 and figures.rows_duplicated == 0
    assert figures.restarts >= figures.kills - 1  # a kill may land on a worker being replaced
    with laminardb.open(path, workers=3) as db:  # the log holds each acknowledged row once
        check(db, oracle)


def test_kill_random_workers_in_memory_with_recovery() -> None:
    oracle = Oracle()
    with laminardb.open(":memory:", workers=2, recovery=True) as db:
        for ddl in DDL:
            db.execute(ddl)
        figures = kill_rounds(db, oracle, rounds=2, seed=7)
    report(":memory: recovery=True, 2 workers", figures)
    assert figures.rows_lost == 0 and figures.rows_duplicated == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_random_workers_fifty_rounds(tmp_path) -> None:
    path = str(tmp_path / "db")
    oracle = Oracle()
    with laminardb.open(path, workers=3) as db:
        for ddl in DDL:
            db.execute(ddl)
        figures = kill_rounds(db, oracle, rounds=50, seed=50)
    report("path, 3 workers, 50 rounds", figures)
    assert figures.rounds == 50
    assert figures.rows_lost == 0 and figures.rows_duplicated == 0
    with laminardb.open(path, workers=2) as db:
        check(db, oracle)


def test_restart_rebuilds_catalog_rows_and_tables(tmp_path) -> None:
    """Statements replay in order on the new worker: drops, alters, tables on worker 0."""
    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute("CREATE SOURCE gone (x BIGINT)")
        db.insert("gone", {"x": [1, 2, 3]})
        db.execute("DROP SOURCE gone")
        db.execute("CREATE SOURCE gone (x BIGINT, y VARCHAR)")
        db.insert("gone", {"x": list(range(40)), "y": ["a"] * 40})
        db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR)")
        db.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        before = [
            db.sql("SELECT count(*) AS n, sum(x) AS s FROM gone").to_arrow().to_pylist(),
            db.sql("SELECT id, v FROM t ORDER BY id LIMIT 100").to_arrow().to_pylist(),
        ]
        for shard in (0, 1):
            old = db.workers()[shard].pid
            os.kill(old, signal.SIGKILL)
            after = [
                db.sql("SELECT count(*) AS n, sum(x) AS s FROM gone").to_arrow().to_pylist(),
                db.sql("SELECT id, v FROM t ORDER BY id LIMIT 100").to_arrow().to_pylist(),
            ]
            assert after == before
            assert db.workers()[shard].pid != old


def test_memory_database_without_recovery_says_rows_are_lost() -> None:
    with laminardb.open(":memory:", workers=2) as db:
        db.execute("CREATE SOURCE m (id BIGINT)")
        db.insert("m", {"id": list(range(10_000))})
        assert db.sql("SELECT count(*) FROM m").fetchall() == [(10_000,)]
        victim = db.workers()[1]
        os.kill(victim.pid, signal.SIGKILL)
        for _ in range(2):  # never an answer from partial data, on any later call
            with pytest.raises(laminardb.ConnectionError, match=r"worker 1 \(pid \d+\)") as info:
                db.sql("SELECT count(*) FROM m")
            assert info.value.shard == 1
        with pytest.raises(laminardb.ConnectionError, match="lost"):
            db.insert("m", {"id": [1]})


@contextlib.contextmanager
def request_timeout(db: Any, seconds: float) -> Iterator[None]:
    """`request_timeout_s` set to `seconds` inside the block only, so that the steps before
    and after it (opening, a restart) keep the default on a loaded machine."""
    cluster = db._cluster
    before = cluster.options
    cluster.options = dataclasses.replace(before, request_timeout_s=seconds)
    try:
        yield
    finally:
        cluster.options = before


def test_stopped_worker_times_out_then_recovers_when_resumed() -> None:
    with laminardb.open(":memory:", workers=2) as db:
        db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR) PARTITION BY (name)")
        names = [f"n{i % 11}" for i in range(200)]
        db.insert("s", {"id": list(range(200)), "name": names})
        expected = db.sql("SELECT count(*), sum(id) FROM s").fetchall()
        victim = db.workers()[1].pid
        os.kill(victim, signal.SIGSTOP)
        try:
            pattern = r"timed out: worker 1 \(pid \d+\) did not answer within 1.5 s"
            with (
                request_timeout(db, 1.5),
                pytest.raises(laminardb.ConnectionError, match=pattern) as info,
            ):
                db.sql("SELECT count(*), sum(id) FROM s")
            assert info.value.shard == 1
            with (
                request_timeout(db, 1.5),
                pytest.raises(laminardb.LaminarError, match="did not answer"),
            ):
                db.insert("s", {"id": [1000, 1001], "name": ["n0", "n1"]})
                db.sql("SELECT count(*) FROM s")  # ships: staging times out, aborted everywhere
        finally:
            os.kill(victim, signal.SIGCONT)
        # Resumed: its stale replies are dropped by request id; the failed insert left nothing.
        assert db.sql("SELECT count(*), sum(id) FROM s").fetchall() == expected
        db.insert("s", {"id": [5000], "name": ["n3"]})
        assert db.sql("SELECT count(*) FROM s").fetchall() == [(201,)]
        assert db.workers()[1].pid == victim


def test_stopped_worker_replaced_by_kill_is_rebuilt(tmp_path) -> None:
    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute("CREATE SOURCE s (id BIGINT)")
        for i in range(6):
            db.insert("s", {"id": list(range(i * 100, i * 100 + 100))})
        db.sql("SELECT 1")
        victim = db.workers()[0].pid
        os.kill(victim, signal.SIGSTOP)
        with (
            request_timeout(db, 1.5),
            pytest.raises(laminardb.ConnectionError, match=r"worker 0 \(pid \d+\)"),
        ):
            db.sql("SELECT count(*) FROM s")
        os.kill(victim, signal.SIGKILL)  # replace it: the next call rebuilds it from the log
        assert db.sql("SELECT count(*), sum(id) FROM s").fetchall() == [(600, sum(range(600)))]
        assert db.workers()[0].pid != victim


def full_disk(*_: object) -> int:
    raise OSError(28, "No space left on device")


def test_full_disk_fails_the_insert_cleanly_and_keeps_what_was_acknowledged(
    tmp_path, monkeypatch
) -> None:
    path = str(tmp_path / "db")
    with laminardb.open(path, workers=2) as db:
        db.execute("CREATE SOURCE d (id BIGINT, name VARCHAR) PARTITION BY (name)")
        db.insert("d", {"id": list(range(100)), "name": [f"n{i % 5}" for i in range(100)]})
        db.sql("SELECT 1")
        size = os.path.getsize(os.path.join(path, "log"))
        with monkeypatch.context() as m:
            m.setattr(log_module, "_write", full_disk)
            db.insert("d", {"id": [100, 101, 102], "name": ["n0", "n1", "n2"]})
            with pytest.raises(laminardb.IngestionError, match=r"source d.*No space left"):
                db.sql("SELECT count(*) FROM d")
            with pytest.raises(laminardb.IngestionError, match="No space left"):
                db.execute("CREATE SOURCE later (x BIGINT)")
        assert os.path.getsize(os.path.join(path, "log")) == size  # no torn record left
        # Not half-applied: no worker holds the failed rows, the statement did not run.
        assert db.sql("SELECT count(*), sum(id) FROM d").fetchall() == [(100, 4950)]
        assert [s.name for s in db.sources()] == ["d"]
        db.insert("d", {"id": [7], "name": ["n7"]})  # space again: works as before
        assert db.sql("SELECT count(*) FROM d").fetchall() == [(101,)]
    with laminardb.open(path, workers=1) as db:
        assert db.sql("SELECT count(*), sum(id) FROM d").fetchall() == [(101, 4957)]


def test_full_dev_shm_is_a_clear_error() -> None:
    st = os.statvfs("/dev/shm")
    too_big = st.f_bavail * st.f_frsize + (1 << 30)
    with pytest.raises(laminardb.ConnectionError, match=r"shared-memory arena of worker 0"):
        laminardb.open(":memory:", workers=1, arena_bytes=too_big)


def read_rows(sub: object, want: int, timeout_s: float = 20.0) -> list[tuple[object, ...]]:
    """Rows from a stream subscription until `want` arrived or the deadline passed."""
    rows: list[tuple[object, ...]] = []
    deadline = time.monotonic() + timeout_s
    while len(rows) < want and time.monotonic() < deadline:
        try:
            batch = sub.next_timeout(100)  # type: ignore[attr-defined]
        except laminardb.SubscriptionError as exc:
            if exc.code != 502:  # 502: nothing yet
                raise
            continue
        if batch is not None:
            rows.extend(batch.fetchall())
    return rows


def test_restarted_worker_forwards_streams_again_without_repeats(tmp_path) -> None:
    devices = [f"d{i}" for i in range(16)]
    with laminardb.open(str(tmp_path / "db"), workers=2) as db:
        db.execute("CREATE SOURCE ev (ts BIGINT, device VARCHAR) PARTITION BY (device)")
        db.execute("CREATE STREAM ev_all AS SELECT ts, device FROM ev")
        first = db.subscribe_stream("ev_all")
        db.start()
        db.insert("ev", {"ts": [1000] * 16, "device": devices})
        assert sorted(read_rows(first, 16)) == sorted((1000, d) for d in devices)
        first.cancel()
        old = db.workers()[1].pid
        os.kill(old, signal.SIGKILL)
        assert db.sql("SELECT count(*) FROM ev").fetchall() == [(16,)]  # rebuilt first
        assert db.workers()[1].pid != old
        second = db.subscribe_stream("ev_all")
        db.insert("ev", {"ts": [2000] * 16, "device": devices})
        got = read_rows(second, 16)
        assert sorted(got) == sorted((2000, d) for d in devices)  # both workers, once each
        with pytest.raises(laminardb.SubscriptionError, match="timeout"):
            second.next_timeout(300)  # and nothing replayed comes again
