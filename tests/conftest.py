"""Suite-wide fixtures: a shared small cluster, the leak check that runs after every test run,
and the deselection of the streams and durability tests' `slow` tier."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SHM = "/dev/shm"
_SLOW_FOLDERS = tuple(Path(__file__).resolve().parent / d for d in ("streams", "durability"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` cases of the streams tests (more worker counts and orders of the same
    differential checks) and of the durability tests (50 fault-injection rounds) run only
    when asked for (`-m slow`, any `-m` naming it, or `LAMINARDB_SLOW=1`), as pyproject
    promises. The differential folder has its own hook, which also reports the count."""
    markexpr = str(config.getoption("markexpr", "") or "")
    if "slow" in markexpr or os.environ.get("LAMINARDB_SLOW") == "1":
        return
    slow = {
        id(i)
        for i in items
        if i.get_closest_marker("slow") and any(f in i.path.parents for f in _SLOW_FOLDERS)
    }
    if slow:
        config.hook.pytest_deselected(items=[i for i in items if id(i) in slow])
        items[:] = [i for i in items if id(i) not in slow]


def our_shm() -> list[str]:
    return [n for n in os.listdir(SHM) if n.startswith(f"laminardb-{os.getpid()}-")]


def our_tempdirs() -> list[str]:
    root = tempfile.gettempdir()
    return [n for n in os.listdir(root) if n.startswith(f"laminardb-{os.getpid()}-")]


def live_children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_suite() -> Iterator[None]:
    """After the whole run: no worker alive, nothing of ours in /dev/shm or the temp folder."""
    yield
    import laminardb

    if laminardb._default is not None:
        laminardb._default.close()
    deadline_children = [p for p in live_children() if "python" in (p.name() or "")]
    _, alive = psutil.wait_procs(deadline_children, timeout=5)
    assert not alive, f"processes of ours still alive after the suite: {[p.pid for p in alive]}"
    assert not our_shm(), f"/dev/shm still holds {our_shm()}"
    assert not our_tempdirs(), f"temp folders left: {our_tempdirs()}"


@pytest.fixture(scope="module")
def db2() -> Iterator[object]:
    """A 2-worker cluster shared by the tests of one module (they use their own source names)."""
    import laminardb

    conn = laminardb.open(":memory:", workers=2)
    yield conn
    conn.close()
