"""The worker's background import of the file readers (workers/preload.py): it imports only
while the request loop is quiet, stops when told, skips what fails to import, and a fresh
worker has the readers imported once it has been idle a moment."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading

import pytest

from workers import preload

pytestmark = pytest.mark.timeout(60)


def test_imports_only_while_the_loop_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    first = threading.Event()

    def fake_import(name: str) -> None:
        imported.append(name)
        first.set()
        if name == "broken":
            raise ImportError("no such module")

    monkeypatch.setattr(importlib, "import_module", fake_import)
    idle = preload.Idle()
    thread = preload.start(idle, ("a", "broken", "b"))
    assert not first.wait(0.2)  # the loop never waited for a request: nothing imported
    idle.enter()
    thread.join(10)
    assert not thread.is_alive()
    assert imported == ["a", "broken", "b"]  # a failed import does not stop the rest


def test_waits_for_quiet_and_stops_when_told() -> None:
    idle = preload.Idle()
    idle.enter()
    assert idle.wait_quiet(0.0)
    idle.leave()
    done: list[bool] = []
    waiter = threading.Thread(target=lambda: done.append(idle.wait_quiet(0.0)))
    waiter.start()
    idle.stop.set()
    waiter.join(10)
    assert done == [False]


def test_every_module_listed_imports() -> None:
    """In a fresh interpreter, as in a worker: each module of MODULES exists and imports."""
    code = (
        "import sys\n"
        "from workers import preload\n"
        "preload.importlib.import_module = lambda n, real=preload.importlib.import_module: "
        "(real(n), print('ok', n))\n"
        "idle = preload.Idle(); idle.enter(); preload.start(idle).join(60)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [w for m in preload.MODULES for w in ("ok", m)]
