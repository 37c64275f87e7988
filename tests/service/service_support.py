"""Helpers of the service tests: the `laminardb-cluster` command run as a subprocess in a
private runtime folder, and the /dev/shm entries of a process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli_command() -> list[str]:
    """The installed entry point when the venv has it, else the same `main` via -m."""
    script = os.path.join(os.path.dirname(sys.executable), "laminardb-cluster")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "laminardb.cli"]


@dataclass
class Cli:
    state_dir: str

    def run(
        self, *args: str, input: str | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAMINARDB_RUNTIME_DIR": self.state_dir, "COLUMNS": "200"}
        env.pop("LAMINARDB_SECRET_FILE", None)
        return subprocess.run(
            [*cli_command(), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        value: dict[str, Any] = json.loads(done.stdout)
        return value

    def service_pid(self) -> int | None:
        try:
            with open(os.path.join(self.state_dir, "service.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def force_stop(self) -> None:
        """Tear-down: stop politely, and kill whatever is left of the service and workers."""
        pid = self.service_pid()
        procs: list[psutil.Process] = []
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                procs = []
        if procs:
            self.run("stop", "--timeout", "30")
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)


def make_state_dir() -> str:
    # Short path: an ipc:// socket path must fit in 107 bytes.
    return tempfile.mkdtemp(prefix="lmsvc-", dir="/tmp")


def our_shm(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"laminardb-{pid}-")]
