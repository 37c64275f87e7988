"""durability="sync": insert() returns only once its rows are in the log and fsynced."""

from __future__ import annotations

import os

import pytest

import laminardb
from laminardb.durability import log as log_module
from laminardb.durability.log import RecordType

pytestmark = pytest.mark.timeout(120)


def logged_rows(path: str) -> int:
    """Rows in the batch records of the log file, read without taking its lock."""
    with open(os.path.join(path, "log"), "rb") as f:
        data = f.read()
    rows, offset = 0, 0
    while offset < len(data):
        record, offset, problem = log_module._decode_at(data, offset)
        assert record is not None, problem
        if record.type is RecordType.BATCH:
            rows += record.table().num_rows
    return rows


def test_sync_insert_is_logged_and_fsynced_before_it_returns(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "db")
    synced: list[int] = []
    fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), fdatasync(fd))[1])
    with laminardb.open(path, workers=2, durability="sync") as db:
        db.execute("CREATE SOURCE s (k BIGINT, v BIGINT) PARTITION BY (k)")
        for i in range(3):
            before = len(synced)
            db.insert("s", {"k": [i, i + 1], "v": [i, i]})
            assert logged_rows(path) == 2 * (i + 1)  # no buffering: in the log already
            assert len(synced) > before  # and fsynced
        assert db.sql("SELECT count(*) AS n FROM s").to_arrow().to_pylist() == [{"n": 6}]


def test_buffered_is_the_default_and_bad_modes_are_refused(tmp_path) -> None:
    with laminardb.open(str(tmp_path / "db"), workers=1) as db:
        assert db._durable.durability == "buffered"
    with pytest.raises(ValueError, match="durability must be one of buffered, sync"):
        log_module.check_durability("always")


def test_sync_needs_a_log_and_a_known_mode(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs a path"):
        laminardb.open(":memory:", workers=1, durability="sync")
    with pytest.raises(ValueError, match="durability must be one of"):
        laminardb.open(str(tmp_path / "db"), workers=1, durability="always")
    with laminardb.open(":memory:", workers=1, recovery=True, durability="sync") as db:
        db.execute("CREATE SOURCE s (k BIGINT)")
        assert db.insert("s", {"k": [1, 2]}) == 2
        assert db.sql("SELECT count(*) FROM s").fetchall() == [(2,)]
