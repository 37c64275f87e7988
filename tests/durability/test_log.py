"""The durability log on its own: round trip, torn and corrupted tails, the exclusive lock."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

import laminardb
from laminardb.durability.log import HEADER, LOG_NAME, Log, RecordType, encode

pytestmark = pytest.mark.timeout(120)

TABLE = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", None]})


def write_three(path: str) -> None:
    log = Log(path)
    assert list(log.replay()) == []
    log.append_ddl("CREATE SOURCE t (id BIGINT, name VARCHAR)")
    log.append_batch("t", TABLE)
    log.append_ddl("DROP SOURCE t")
    log.close()


def test_round_trip(tmp_path):
    write_three(str(tmp_path))
    log = Log(str(tmp_path))
    records = list(log.replay())
    log.close()
    assert [r.type for r in records] == [RecordType.DDL, RecordType.BATCH, RecordType.DDL]
    assert records[0].sql == "CREATE SOURCE t (id BIGINT, name VARCHAR)"
    assert records[1].source == "t"
    assert records[1].table().equals(TABLE)
    assert records[2].sql == "DROP SOURCE t"
    assert log.dropped_records == 0


def test_appends_after_replay_follow_the_old_records(tmp_path):
    write_three(str(tmp_path))
    log = Log(str(tmp_path))
    assert len(list(log.replay())) == 3
    log.append_ddl("CREATE SOURCE u (x BIGINT)")
    log.checkpoint()
    log.close()
    log = Log(str(tmp_path))
    assert [r.sql for r in log.replay() if r.type is RecordType.DDL][-1].startswith(
        "CREATE SOURCE u"
    )
    log.close()


def test_torn_tail_is_truncated_at_every_offset(tmp_path, caplog):
    write_three(str(tmp_path))
    file = os.path.join(str(tmp_path), LOG_NAME)
    with open(file, "rb") as f:
        full = f.read()
    last = encode(RecordType.DDL, "", b"DROP SOURCE t")
    intact = len(full) - len(last)
    assert full[intact:] == last
    for cut in range(intact + 1, len(full)):
        with open(file, "wb") as f:
            f.write(full[:cut])
        log = Log(str(tmp_path))
        with caplog.at_level(logging.WARNING, logger="laminardb.durability"):
            records = list(log.replay())
        log.close()
        assert len(records) == 2, cut
        assert log.dropped_records == 1 and log.dropped_bytes == cut - intact
        assert os.path.getsize(file) == intact
    assert "dropping the last" in caplog.text


def test_flipped_byte_is_detected(tmp_path):
    write_three(str(tmp_path))
    file = os.path.join(str(tmp_path), LOG_NAME)
    with open(file, "rb") as f:
        full = bytearray(f.read())
    first = len(encode(RecordType.DDL, "", b"CREATE SOURCE t (id BIGINT, name VARCHAR)"))
    for position in (first + 5, first + HEADER.size + 3, len(full) // 2):
        damaged = bytearray(full)
        damaged[position] ^= 0x40
        with open(file, "wb") as f:
            f.write(damaged)
        log = Log(str(tmp_path))
        records = list(log.replay())
        log.close()
        assert len(records) == 1, position  # everything from the damaged record on is gone
        assert log.dropped_records == 1
        assert os.path.getsize(file) == first


def test_lock_is_exclusive_across_processes(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from laminardb.durability.log import Log
                log = Log({str(tmp_path)!r})
                print("locked", flush=True)
                sys.stdin.readline()
                log.close()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(laminardb.ConnectionError, match="in use") as info:
            Log(str(tmp_path))
        assert str(tmp_path) in str(info.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    Log(str(tmp_path)).close()  # released once the holder closed it


def test_lock_is_released_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from laminardb.durability.log import Log; Log({str(tmp_path)!r}); "
            "print('locked', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(30)
    Log(str(tmp_path)).close()
