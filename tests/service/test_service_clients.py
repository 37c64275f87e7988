"""`laminardb.connect(uri)`: the Connection API from other processes, several at once,
answers equal to one native instance, data through /dev/shm, native error classes."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from service_support import ROOT, Cli

import laminardb
from laminardb.api.args import argument_checks
from laminardb.api.connection import Connection
from laminardb.service import protocol as p
from laminardb.service.client import ARGUMENT_CHECKS, RemoteConnection

ROWS = [{"ts": i, "device": f"d{i % 5}", "value": float(i) / 4} for i in range(200)]
QUERIES = [
    "SELECT count(*) AS n, sum(value) AS s FROM readings",
    "SELECT device, count(*) AS n, max(value) AS m FROM readings GROUP BY device",
    "SELECT ts, value FROM readings WHERE value > 20 ORDER BY ts LIMIT 7",
]
DDL = "CREATE SOURCE readings (ts BIGINT, device VARCHAR, value DOUBLE)"


def rows(table: pa.Table) -> list[tuple[object, ...]]:
    return sorted(zip(*(c.to_pylist() for c in table.columns), strict=True), key=repr)


def test_public_surface_matches_connection() -> None:
    ours = {n for n in dir(Connection) if not n.startswith("_")}
    missing = ours - set(dir(RemoteConnection))
    assert not missing, f"RemoteConnection lacks {sorted(missing)}"
    for name in ours:
        local, remote = getattr(Connection, name), getattr(RemoteConnection, name)
        assert isinstance(local, property) == isinstance(remote, property), name
        assert inspect.iscoroutinefunction(local) == inspect.iscoroutinefunction(remote), name
    expected = {name: tuple(checks) for name, checks in argument_checks(Connection).items()}
    assert expected == ARGUMENT_CHECKS  # the client checks arguments as Connection does


def test_same_answers_as_one_native_instance(service: tuple[Cli, str]) -> None:
    import laminardb_native

    _, uri = service
    native = laminardb_native.open(":memory:")
    with laminardb.connect(uri) as db:
        assert isinstance(db, RemoteConnection) and db.shared_memory
        db.execute(DDL + " PARTITION BY (device)")
        native.execute(DDL)
        for chunk in (ROWS[:50], ROWS[50:120]):
            db.insert("readings", chunk)
            native.insert("readings", chunk)
        arrow = pa.Table.from_pylist(ROWS[120:], schema=db.schema("readings"))
        db.insert("readings", arrow)
        native.insert("readings", arrow)
        for sql in QUERIES:
            assert rows(db.sql(sql).to_arrow()) == rows(native.query(sql).to_arrow()), sql
        assert [s.name for s in db.sources()] == ["readings"]
        assert db.sources()[0].partition_by == ["device"]
        assert sum(w.rows_ingested for w in db.workers()) == len(ROWS)
        assert db.metrics().source_count == 1
        assert db.explain(QUERIES[0]).num_rows > 0
    native.close()


def test_errors_are_native_classes_and_nothing_is_half_applied(service: tuple[Cli, str]) -> None:
    _, uri = service
    with laminardb.connect(uri) as db:
        db.execute("CREATE SOURCE errs (id BIGINT NOT NULL, name VARCHAR)")
        with pytest.raises(laminardb.SchemaError, match="errs"):
            db.insert("errs", [{"id": 1, "name": "a"}, {"id": None, "name": "b"}])
        with pytest.raises(laminardb.SchemaError, match="nope"):
            db.insert("nope", [{"id": 1}])
        with pytest.raises(laminardb.QueryError, match="SELEC"):
            db.sql("SELEC 1")
        with pytest.raises(laminardb.SchemaError, match="errs"):
            db.execute("CREATE SOURCE errs (id BIGINT)")
        with pytest.raises(TypeError, match="argument 'query': 'NoneType' object cannot be cast"):
            db.sql(None)
        with pytest.raises(TypeError, match="argument 'table': 'int' object cannot be cast"):
            db.insert_json(5, "[]")
        with pytest.raises(TypeError, match="argument 'table': 'NoneType' object cannot be"):
            db.insert(None, [{"id": 1}])
        with pytest.raises(TypeError, match="argument 'name': 'int' object cannot be cast"):
            db.subscribe_stream(5)
        with pytest.raises(OverflowError, match="can't convert negative int to unsigned"):
            db.cancel_query(-1)
        assert db.sql(np.str_("SELECT 2 AS two")).fetchall() == [(2,)]  # numpy scalars
        assert db.sql("SELECT count(*) AS n FROM errs").to_arrow().column(0)[0].as_py() == 0
        assert db.insert_json("errs", '[{"id": 7, "name": "j"}]') == 1
        assert db.insert_csv("errs", "id,name\n8,c\n") == 1
        with db.writer("errs") as w:
            w.insert([{"id": 9, "name": "w"}])
            assert w.flush() >= 1  # ships whatever is buffered for the source
        assert db.sql("SELECT count(*) AS n FROM errs").to_arrow().column(0)[0].as_py() == 3
    with pytest.raises(laminardb.ConnectionError, match="closed"):
        db.sql("SELECT 1")


CHILD = textwrap.dedent(
    """
    import sys, laminardb
    db = laminardb.connect(sys.argv[1])
    me = int(sys.argv[2])
    assert db.shared_memory
    for i in range(20):
        db.insert("shared", [{"client": me, "seq": i}] * 5)
    print(db.sql(f"SELECT count(*) AS n FROM shared WHERE client = {me}").to_arrow().column(0)[0].as_py())
    db.close()
    """
)


def test_statements_and_texts_of_megabytes(service: tuple[Cli, str]) -> None:
    """SQL and insert_json text travel in the message header: megabytes are served, and a
    text beyond the protocol's limit fails at once in the client (it used to hang)."""
    _, uri = service
    rows = [{"a": i, "s": "x" * 20} for i in range(40_000)]  # about 1.7 MB of JSON
    with laminardb.connect(uri) as db:
        db.execute("CREATE SOURCE big_text (a BIGINT, s VARCHAR)")
        assert db.insert_json("big_text", json.dumps(rows)) == len(rows)
        assert db.sql("SELECT '" + "y" * 2_000_000 + "' AS s").num_rows == 1
        assert db.sql("SELECT count(*) AS n FROM big_text").fetchall() == [(len(rows),)]
        with pytest.raises(laminardb.LaminarError, match="request too large"):
            db.sql("SELECT '" + "z" * (p.MAX_HEADER_BYTES + 1) + "' AS s")
        assert db.sql("SELECT 1 AS one").fetchall() == [(1,)]


def test_a_killed_client_is_no_longer_counted(service: tuple[Cli, str]) -> None:
    _, uri = service
    with laminardb.connect(uri) as db:
        before = db.status()["clients"]
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import laminardb, sys; db = laminardb.connect({uri!r}); "
                "print('up', flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "up\n"
            assert db.status()["clients"] == before + 1
        finally:
            child.kill()
            child.wait(10)
        deadline = time.monotonic() + 10
        while db.status()["clients"] != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.status()["clients"] == before


def test_two_client_processes_share_one_cluster(service: tuple[Cli, str]) -> None:
    _, uri = service
    with laminardb.connect(uri) as db:
        db.execute("CREATE SOURCE shared (client BIGINT, seq BIGINT) PARTITION BY (client)")
        db.execute("CREATE STREAM shared_out AS SELECT client, seq FROM shared WHERE seq >= 0")
        db.start()
        sub = db.subscribe_stream("shared_out")
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, uri, str(n)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in (1, 2)
        ]
        for child in children:
            out, errors = child.communicate(timeout=90)
            assert child.returncode == 0, errors
            assert out.strip() == "100"
        assert db.sql("SELECT count(*) AS n FROM shared").to_arrow().column(0)[0].as_py() == 200
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 200 and time.monotonic() < deadline:
            batch = sub.next_timeout(1000) if sub.is_active else None
            seen += 0 if batch is None else batch.num_rows
        assert seen == 200
        sub.cancel()
        assert not sub.is_active
        assert db.status()["clients"] >= 1


async def test_async_and_callback_subscriptions(service: tuple[Cli, str]) -> None:
    _, uri = service
    with laminardb.connect(uri) as db:
        db.execute("CREATE SOURCE ev (k BIGINT, v BIGINT)")
        db.execute("CREATE STREAM ev_out AS SELECT k, v FROM ev WHERE v > 0")
        db.start()
        got: list[int] = []
        callback = db.subscribe_stream_callback("ev_out", lambda r: got.append(r.num_rows))
        sub = await db.subscribe_stream_async("ev_out")
        db.insert("ev", [{"k": 1, "v": 1}, {"k": 2, "v": 2}, {"k": 3, "v": 0}])
        first = await sub.__anext__()
        assert first.num_rows == 2
        deadline = time.monotonic() + 30
        while sum(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(got) == 2
        callback.cancel()
        sub.cancel()
        snapshot = [r.num_rows for r in db.subscribe("SELECT * FROM ev")]
        assert sum(snapshot) == 3


def test_remote_load_reports_progress(service: tuple[Cli, str], tmp_path: Any) -> None:
    import pyarrow.csv as pacsv

    _, uri = service
    path = tmp_path / "rows.csv"
    pacsv.write_csv(pa.Table.from_pylist(ROWS), str(path))
    seen: list[tuple[str, int, int]] = []
    with laminardb.connect(uri) as db:
        db.execute("CREATE SOURCE loaded (ts BIGINT, device VARCHAR, value DOUBLE)")
        assert db.load("loaded", str(path), progress=lambda *r: seen.append(r)) == len(ROWS)
        size = path.stat().st_size
        assert seen[0] == ("read", 0, size) and seen[-1] == ("commit", size, size)
        with db.watching(lambda *r: seen.append(r)):
            seen.clear()
            db.execute(f"COPY loaded FROM '{path}'")
        assert seen[-1] == ("commit", size, size)
        db.sql("SELECT 1")  # a call that loads nothing reports nothing
        assert seen[-1] == ("commit", size, size)
        n = db.sql("SELECT count(*) AS n FROM loaded").to_arrow().column("n").to_pylist()
        assert n == [2 * len(ROWS)]


def test_cli_copy_from_shows_a_progress_bar(service: tuple[Cli, str], tmp_path: Any) -> None:
    import os

    import pyarrow.csv as pacsv
    from service_support import cli_command

    cli, _ = service
    path = tmp_path / "bar.csv"
    pacsv.write_csv(pa.Table.from_pylist(ROWS), str(path))
    made = cli.run("sql", "CREATE SOURCE barred (ts BIGINT, device VARCHAR, value DOUBLE)")
    assert made.returncode == 0, made.stderr
    env = {**os.environ, "LAMINARDB_RUNTIME_DIR": cli.state_dir, "TTY_COMPATIBLE": "1"}
    env.pop("LAMINARDB_SECRET_FILE", None)
    done = subprocess.run(
        [*cli_command(), "sql", f"COPY barred FROM '{path}'"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stderr)  # the terminal's control codes
    assert "reading" in plain or "committing" in plain, plain
    assert "kB" in plain  # the bar counts the input bytes
    assert f"{len(ROWS)} row(s) affected" in plain


def test_connecting_does_not_import_pandas(cli: Cli) -> None:
    """A CLI command that only talks to the service stays off pandas (0.35 s a command):
    pyarrow's constructors from Python values import it, so the handshake builds its probe
    from buffers."""
    uri = cli.run("start", "--workers", "1").stdout.strip()
    check = textwrap.dedent(
        f"""
        import sys
        import laminardb
        conn = laminardb.connect({uri!r})
        print(conn.sql("SELECT 1 AS one").fetchall(), "pandas" in sys.modules)
        conn.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[(1,)]", "False"]
    assert cli.run("stop").returncode == 0
