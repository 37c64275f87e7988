"""A pre-faulted shared-memory region per worker that carries Arrow IPC from the coordinator.

The coordinator creates it in /dev/shm (owner-only), the worker maps it at start-up, and the
coordinator unlinks the name as soon as the worker has said hello: from then on nothing of
ours is visible in /dev/shm, and the kernel frees the pages when the last mapping goes,
however either process ends. One slot at a time: the coordinator writes, the worker copies
the bytes out before replying, and only then is the region written again.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets

SHM_DIR = "/dev/shm"
PREFIX = "laminardb-"


class Arena:
    """A mapped shared-memory region; `create` in the coordinator, `attach` in a worker."""

    def __init__(self, name: str, size: int, mm: mmap.mmap, owner: bool):
        self.name = name
        self.size = size
        self._mm: mmap.mmap | None = mm
        self._owner = owner
        self._linked = owner

    @classmethod
    def create(cls, size: int, tag: str) -> Arena:
        name = f"{PREFIX}{os.getpid()}-{tag}-{secrets.token_hex(4)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            # Reserve the pages now: a full /dev/shm fails here (ENOSPC), not with a SIGBUS later.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        _prefault(mm, size)
        return cls(name, size, mm, owner=True)

    @classmethod
    def attach(cls, name: str, size: int) -> Arena:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=False)

    @property
    def view(self) -> memoryview:
        if self._mm is None:
            raise ValueError(f"arena {self.name} is closed")
        return memoryview(self._mm)

    def unlink(self) -> None:
        """Remove the name (mappings stay valid); safe to call twice."""
        if self._linked:
            self._linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, self.name))

    def close(self) -> None:
        if self._owner:
            self.unlink()
        if self._mm is not None:
            mm, self._mm = self._mm, None
            with contextlib.suppress(BufferError):
                mm.close()


def _prefault(mm: mmap.mmap, size: int) -> None:
    """Touch every page now, so that no insert pays the first-touch faults."""
    import numpy as np

    pages = np.frombuffer(mm, dtype=np.uint8)
    pages[:: mmap.PAGESIZE] = 0
    del pages


def sweep_stale() -> list[str]:
    """Unlink segments whose creating process is gone (left by a coordinator killed early)."""
    import psutil

    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if not psutil.pid_exists(pid):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
    return removed
