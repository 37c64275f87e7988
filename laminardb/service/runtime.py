"""Where a running service leaves its state: a per-user runtime folder (owner-only).

`$LAMINARDB_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/laminardb`, else `/tmp/laminardb-<uid>`.
It holds `service.pid` (written first, exclusively), `service.sock` (the default ipc://
endpoint), `service.uri` (written last, atomically: its presence means "ready") and
`service.log` (the service's stderr). A folder whose pid names no live service is stale
(the service crashed or was killed) and `clean()` removes what it left.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass

import psutil

ENV = "LAMINARDB_RUNTIME_DIR"
SERVICE_MODULE = "laminardb.service"


def default_dir() -> str:
    if os.environ.get(ENV):
        return os.environ[ENV]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "laminardb")
    return f"/tmp/laminardb-{os.getuid()}"


@dataclass(frozen=True)
class State:
    """The state files of one service."""

    root: str

    @property
    def pid_file(self) -> str:
        return os.path.join(self.root, "service.pid")

    @property
    def uri_file(self) -> str:
        return os.path.join(self.root, "service.uri")

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "service.sock")

    @property
    def log_file(self) -> str:
        return os.path.join(self.root, "service.log")

    def ensure(self) -> None:
        """Create the folder owner-only; refuse one that someone else owns or can enter."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        info = os.stat(self.root)
        if info.st_uid != os.getuid():
            raise PermissionError(f"{self.root} belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(self.root, 0o700)

    def pid(self) -> int | None:
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def uri(self) -> str | None:
        try:
            with open(self.uri_file) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def process(self) -> psutil.Process | None:
        """The live service process named by the pid file, or None (absent, dead, reused)."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if SERVICE_MODULE not in " ".join(proc.cmdline()):
                return None
            return proc
        except psutil.Error:
            return None

    def is_stale(self) -> bool:
        """State files left behind by a service that no longer runs."""
        leftovers = any(os.path.lexists(p) for p in (self.pid_file, self.uri_file, self.socket))
        return leftovers and self.process() is None

    def claim(self) -> None:
        """Write our pid exclusively (FileExistsError: another service holds the folder)."""
        fd = os.open(self.pid_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")

    def publish(self, uri: str) -> None:
        """Announce the URI (atomically: readers never see half of it)."""
        tmp = self.uri_file + ".tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(uri + "\n")
        os.replace(tmp, self.uri_file)

    def clean(self) -> None:
        """Remove the state files (not the log, which explains what happened)."""
        for path in (self.uri_file, self.uri_file + ".tmp", self.socket, self.pid_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until `proc` has exited (a zombie counts as exited: where nobody reaps orphans,
    a dead service stays one); False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            proc.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            if time.monotonic() >= deadline:
                return False
