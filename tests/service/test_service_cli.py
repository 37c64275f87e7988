"""`laminardb-cluster` through its own entry point: start, status, sql, stop, exit codes,
--help everywhere, and the clean-up after `kill -9` of the service."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from service_support import Cli, our_shm

import laminardb


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [
            p
            for p in alive
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if alive:
            time.sleep(0.05)
    return alive


@pytest.mark.parametrize("command", [[], ["start"], ["status"], ["stop"], ["sql"], ["bench"]])
def test_help_everywhere(cli: Cli, command: list[str]) -> None:
    done = cli.run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout


def test_lifecycle_start_status_sql_stop(cli: Cli) -> None:
    assert cli.run("status").returncode == 3
    assert cli.run("stop").returncode == 3
    started = cli.run("start", "--workers", "2")
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip()
    assert uri.startswith("ipc://") and uri.endswith("service.sock")
    assert os.stat(cli.state_dir).st_mode & 0o077 == 0
    assert os.stat(uri[len("ipc://") :]).st_mode & 0o077 == 0
    again = cli.run("start")
    assert again.returncode == 4 and "already running" in again.stderr

    ddl = cli.run(
        "sql", "CREATE SOURCE r (ts BIGINT, device VARCHAR, v DOUBLE) PARTITION BY (device)"
    )
    assert ddl.returncode == 0, ddl.stderr
    ins = cli.run("sql", "INSERT INTO r VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, 'c', 4.0)")
    assert ins.returncode == 0 and "3 row(s) affected" in ins.stderr
    sel = cli.run("sql", "--format", "json", "SELECT device, v FROM r WHERE v > 2")
    assert sel.returncode == 0, sel.stderr
    assert sorted(sel.stdout.split("\n")[0].count(x) for x in ('"b"', '"c"')) == [1, 1]
    table = cli.run("sql", "SELECT count(*) AS n FROM r")
    assert table.returncode == 0 and " 3 " in table.stdout
    bad = cli.run("sql", "SELEC 1")
    assert bad.returncode == 1 and "QueryError" in bad.stderr
    script = cli.run("sql", input="SELECT count(*) AS n\nFROM r;\nnot sql;\nSELECT 1;\nexit\n")
    assert script.returncode == 1 and "QueryError" in script.stderr
    assert (
        " 3 " in script.stdout and "statement 2 of 3 failed (not sql); 1 not run" in script.stderr
    )

    status = cli.status()
    workers = status["workers"]
    assert [w["shard"] for w in workers] == [0, 1]
    assert all(w["alive"] and w["rss_bytes"] > 0 for w in workers)
    assert sum(w["rows_ingested"] for w in workers) == 3
    assert {"rows_per_s", "cpu_percent", "watermark", "streams"} <= set(workers[0])
    text = cli.run("status")
    assert text.returncode == 0 and str(workers[0]["pid"]) in text.stdout
    assert "rows/s now" in text.stdout

    service_pid = status["pid"]
    stopped = cli.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone([service_pid, *(w["pid"] for w in workers)]) == []
    assert our_shm(service_pid) == []
    assert sorted(os.listdir(cli.state_dir)) == ["service.log"]
    assert cli.run("status").returncode == 3


def test_statement_lists_and_script_files(service: tuple[Cli, str], tmp_path: Path) -> None:
    """Several statements run in order and each result is shown; the first that fails stops
    the rest with exit code 1 and the ones before it keep their effects."""
    cli, _ = service
    both = cli.run("sql", "--format", "json", "SELECT 1 AS a; SELECT 'x;y' AS b")
    assert both.returncode == 0, both.stderr
    assert [json.loads(line) for line in both.stdout.splitlines()] == [[{"a": 1}], [{"b": "x;y"}]]
    script = tmp_path / "load.sql"
    script.write_text(
        "-- a script: statements over several lines\n"
        "CREATE SOURCE cli_script (id BIGINT,\n  name VARCHAR);\n"
        "INSERT INTO cli_script VALUES (1, 'a;b');\n"
        "SELEC oops;\n"
        "INSERT INTO cli_script VALUES (2, 'never');\n"
    )
    failed = cli.run("sql", "-f", str(script))
    assert failed.returncode == 1 and "statement 3 of 4 failed (SELEC oops)" in failed.stderr
    rows = cli.run("sql", "--format", "json", "SELECT * FROM cli_script")
    assert json.loads(rows.stdout) == [{"id": 1, "name": "a;b"}]
    assert cli.run("sql", input="").returncode == 0  # an empty script does nothing
    assert cli.run("sql", "-f", str(script), "SELECT 1").returncode == 2


def test_output_formats_for_scripts(service: tuple[Cli, str], tmp_path: Path) -> None:
    """--format json is strict JSON (no NaN); --format csv refuses what CSV cannot hold
    with a sentence, not a traceback; an `exit` line inside a statement is SQL."""
    cli, _ = service
    odd = cli.run(
        "sql",
        "--format",
        "json",
        "SELECT CAST('NaN' AS DOUBLE) AS a, X'DEADBEEF' AS b, CAST(1.5 AS DECIMAL(5, 2)) AS c",
    )
    assert odd.returncode == 0, odd.stderr
    assert json.loads(odd.stdout, parse_constant=pytest.fail) == [
        {"a": None, "b": "deadbeef", "c": "1.50"}
    ]
    nested = cli.run("sql", "--format", "csv", "SELECT [1, 2] AS l")
    assert nested.returncode == 1 and "cannot write these columns: l" in nested.stderr
    assert "Traceback" not in nested.stderr
    quit_column = tmp_path / "quit.sql"
    quit_column.write_text("SELECT\n  quit\nFROM (SELECT 1 AS quit);\nexit\nSELECT 2;\n")
    ran = cli.run("sql", "--format", "json", "-f", str(quit_column))
    assert ran.returncode == 0 and json.loads(ran.stdout) == [{"quit": 1}], ran.stderr
    comments = tmp_path / "comments.sql"
    comments.write_text("-- nothing to run\n")
    assert cli.run("sql", "-f", str(comments)).returncode == 0


def test_non_loopback_needs_a_secret(cli: Cli) -> None:
    done = cli.run("start", "--listen", "tcp://0.0.0.0:*")
    assert done.returncode == 2 and "--secret-file" in done.stderr


def test_kill_9_leaves_nothing_and_next_start_cleans(cli: Cli) -> None:
    uri = cli.run("start", "--workers", "1").stdout.strip()
    status = cli.status()
    service_pid = status["pid"]
    worker_pids = [w["pid"] for w in status["workers"]]
    client = laminardb.connect(uri)
    sub_source = "CREATE SOURCE k9 (a BIGINT)"
    client.execute(sub_source)
    os.kill(service_pid, signal.SIGKILL)
    assert wait_gone([service_pid, *worker_pids]) == []
    assert our_shm(service_pid) == []
    with pytest.raises(laminardb.ConnectionError, match="gone"):  # not a hang
        client.insert("k9", [{"a": 1}])
    client.close()
    stale = cli.run("status")
    assert stale.returncode == 3 and "dead" in stale.stderr
    restarted = cli.run("start", "--workers", "1")
    assert restarted.returncode == 0, restarted.stderr
    assert "cleaning" in restarted.stderr
    assert cli.run("sql", "SELECT 1").returncode == 0
    new_pid = cli.status()["pid"]
    os.kill(new_pid, signal.SIGINT)  # like Ctrl-C: a clean stop
    assert wait_gone([new_pid]) == []
    assert our_shm(new_pid) == []
    assert sorted(os.listdir(cli.state_dir)) == ["service.log"]
    assert cli.run("status").returncode == 3
