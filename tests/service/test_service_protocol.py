"""The wire protocol: records, tables and schemas survive the trip; hostile input is refused
with an error reply and the service stays up; CURVE refuses clients without the secret."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pyarrow as pa
import pytest
import zmq
from service_support import Cli

import laminardb
from laminardb.api.catalog import SourceInfo, WorkerInfo
from laminardb.api.results import ExecuteResult, QueryResult
from laminardb.service import auth, logs, shm
from laminardb.service import protocol as p
from laminardb.service.runtime import State


def roundtrip(value: Any) -> Any:
    frames = p.encode(p.Reply(7, value))
    message = p.decode_response([bytes(f) for f in frames])
    assert isinstance(message, p.Reply) and message.rid == 7
    return message.value


def test_records_tables_and_schemas_roundtrip() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    back = roundtrip(
        [
            QueryResult(table),
            WorkerInfo(0, 12, True, 100, 5),
            SourceInfo("s", table.schema, None, ["a"]),
        ]
    )
    assert back[0].to_arrow().equals(table)
    assert back[1] == WorkerInfo(0, 12, True, 100, 5)
    assert (
        back[2].name == "s"
        and back[2].schema.equals(table.schema)
        and back[2].partition_by == ["a"]
    )
    result = roundtrip(ExecuteResult.query(QueryResult(table)))
    assert result.result_type == "query" and result.to_query_result().to_arrow().equals(table)
    assert roundtrip({"k": [1, 2.5, None, "s"]}) == {"k": [1, 2.5, None, "s"]}


def test_requests_cannot_carry_records_or_unknown_types() -> None:
    record = msgspec.msgpack.Ext(p.EXT_RECORD, b"\x92\xa3Foo\x80")
    header = msgspec.msgpack.encode({"type": "call", "rid": 3, "method": "sql", "args": [record]})
    with pytest.raises(p.ProtocolError):
        p.decode_request([header])
    missing = msgspec.msgpack.Ext(p.EXT_TABLE, (3).to_bytes(4, "little"))
    header = msgspec.msgpack.encode({"type": "call", "rid": 1, "method": "x", "args": [missing]})
    with pytest.raises(p.ProtocolError, match="missing"):
        p.decode_request([header])


def test_shm_segment_is_owner_only_and_unlinked() -> None:
    table = pa.table({"x": list(range(10))})
    with shm.segment(table) as (name, size):
        assert os.stat(f"/dev/shm/{name}").st_mode & 0o077 == 0
        assert shm.take(name, size).equals(table)
        assert not os.path.exists(f"/dev/shm/{name}")
    for bad in ("../etc/passwd", "laminardb-1-c-zz", "x"):
        with pytest.raises(p.ProtocolError):
            shm.take(bad, 10)


def test_state_folder_detects_stale_files(tmp_path: Any) -> None:
    state = State(str(tmp_path / "rt"))
    state.ensure()
    assert oct(os.stat(state.root).st_mode & 0o777) == "0o700"
    with open(state.pid_file, "w") as f:
        f.write("999999999\n")
    state.publish("ipc:///nowhere")
    assert state.is_stale() and state.process() is None
    state.clean()
    assert not state.is_stale() and os.listdir(state.root) == []


def test_log_records_carry_the_shard() -> None:
    import logging

    record = logging.LogRecord("laminardb.worker", logging.INFO, "f", 1, "hi", None, None)
    assert logs.ShardFilter(3).filter(record) and record.shard == "worker 3"
    assert (
        logging.Formatter(logs.FORMAT)
        .format(record)
        .endswith("[worker 3] INFO laminardb.worker: hi")
    )


def raw_request(uri: str, frames: list[bytes], hello: bool = True) -> p.Response:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(uri)
    try:
        if hello:
            sock.send_multipart(p.Codec(records=False).encode(p.Hello(p.VERSION, os.getpid())))
            assert sock.poll(10_000), "no welcome"
            assert isinstance(p.decode_response(sock.recv_multipart()), p.Welcome)
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no reply"
        return p.decode_response(sock.recv_multipart())
    finally:
        sock.close(0)
        ctx.term()


def call(method: str, *args: Any, **fields: Any) -> list[bytes]:
    return [
        msgspec.msgpack.encode(
            {"type": "call", "rid": 5, "method": method, "args": list(args), **fields}
        )
    ]


HOSTILE = {
    "wrong version": (
        [msgspec.msgpack.encode({"type": "hello", "version": 99, "pid": 1})],
        False,
        "version 99",
    ),
    "garbage": ([b"\xc1\xff not msgpack"], True, "malformed"),
    "unknown type": ([msgspec.msgpack.encode({"type": "nuke", "rid": 5})], True, "malformed"),
    "no hello": (call("sql", "SELECT 1"), False, "hello"),
    "truncated frames": (
        [
            msgspec.msgpack.encode(
                {
                    "type": "call",
                    "rid": 5,
                    "method": "insert",
                    "args": ["t", msgspec.msgpack.Ext(p.EXT_TABLE, (1).to_bytes(4, "little"))],
                }
            )
        ],
        True,
        "missing",
    ),
    "bad arrow frame": (
        [
            msgspec.msgpack.encode(
                {
                    "type": "call",
                    "rid": 5,
                    "method": "insert",
                    "args": ["t", msgspec.msgpack.Ext(p.EXT_TABLE, (0).to_bytes(4, "little"))],
                }
            ),
            b"not arrow",
        ],
        True,
        "Arrow",
    ),
    "huge header": (
        [b"\x91" + msgspec.msgpack.encode("x" * (p.MAX_HEADER_BYTES + 1))],
        True,
        "too large",
    ),
    "huge segment": (
        call("insert", "t", segment="laminardb-1-c-0123456789abcdef", segment_size=1 << 50),
        True,
        "size",
    ),
    "foreign segment": (
        call("insert", "t", segment="../../etc/passwd", segment_size=10),
        True,
        "segment name",
    ),
    "unknown method": (call("__class__"), True, "unknown method"),
    "wrong arguments": (call("sql", 1, 2, 3), True, "TypeError"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_messages_get_an_error_reply(service: tuple[Cli, str], case: str) -> None:
    _, uri = service
    frames, hello, expected = HOSTILE[case]
    reply = raw_request(uri, frames, hello)
    assert isinstance(reply, p.Fail)
    assert expected.lower() in f"{reply.kind}: {reply.message}".lower()


def test_service_stays_up_after_hostile_messages(service: tuple[Cli, str]) -> None:
    cli, uri = service
    for frames, hello, _ in HOSTILE.values():
        raw_request(uri, frames, hello)
    with laminardb.connect(uri) as db:
        assert db.sql("SELECT 41 + 1 AS x").to_arrow().column(0)[0].as_py() == 42
    assert cli.run("status").returncode == 0


def test_curve_refuses_clients_without_the_secret(cli: Cli, tmp_path: Any) -> None:
    secret = str(tmp_path / "secret")
    started = cli.run(
        "start", "--workers", "1", "--listen", "tcp://0.0.0.0:*", "--secret-file", secret
    )
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip().replace("0.0.0.0", "127.0.0.1")
    assert os.stat(secret).st_mode & 0o077 == 0
    with pytest.raises(laminardb.ConnectionError, match="refused this client without"):
        laminardb.connect(uri)
    wrong = str(tmp_path / "wrong")
    auth.create(wrong)
    with pytest.raises(laminardb.ConnectionError, match="refused this client with a wrong"):
        laminardb.connect(uri, secret_file=wrong)
    os.chmod(wrong, 0o644)
    with pytest.raises(laminardb.ConnectionError, match="owner only"):
        laminardb.connect(uri, secret_file=wrong)
    with laminardb.connect(uri, secret_file=secret) as db:
        assert db.sql("SELECT 1 AS one").to_arrow().column(0)[0].as_py() == 1
    assert cli.run("status").returncode == 1  # the CLI has no secret either
    env_status = cli.run("status", "--secret-file", secret)
    assert env_status.returncode == 0, env_status.stderr


def test_status_and_result_rendering() -> None:
    from rich.console import Console

    from laminardb.cli import render

    status = {
        "pid": 10, "uri": "ipc:///x", "path": ":memory:", "uptime_s": 3661.0, "clients": 2,
        "subscriptions": 1, "rss_bytes": 1 << 20, "cpu_percent": 5.0,
        "workers": [
            {"shard": 0, "pid": 11, "alive": True, "rows_ingested": 1500, "rows_per_s": 250.0,
             "rss_bytes": 3 << 20, "cpu_percent": 12.5, "watermark": 42, "streams": 1},
            {"shard": 1, "pid": 12, "alive": False, "rows_ingested": 0, "rows_per_s": 0.0,
             "rss_bytes": 0, "cpu_percent": 0.0, "watermark": None, "streams": None},
        ],
    }  # fmt: skip
    console = Console(width=200, record=True)
    for table in render.status_tables(status):
        console.print(table)
    text = console.export_text()
    for expected in ("1:01:01", "1 / 2", "1,500", "4.0 MiB", "12.5", "42", "no"):
        assert expected in text, expected
    console.print(render.result_table(pa.table({"a": list(range(60))}), max_rows=5))
    assert "5 of 60 rows shown" in console.export_text()
