"""Arrow data of a same-host client through /dev/shm instead of the socket.

The client writes an IPC stream into a fresh segment that only its user can open (mode 0600,
`O_EXCL`), sends the segment's name, and the service maps it and unlinks the name at once;
the client unlinks it too once the call is answered (in case the service never got that far),
so no segment outlives a call, whoever dies. Names carry the client's pid, like the arena's,
so the suite's leak check and stale-segment clean-up recognise them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import stat
from collections.abc import Iterator

import pyarrow as pa

from laminardb.service.protocol import ProtocolError, ipc_to_table, table_to_ipc

SHM_DIR = "/dev/shm"
MAX_SEGMENT_BYTES = 16 << 30
_NAME = re.compile(r"^laminardb-\d{1,10}-c-[0-9a-f]{16}$")


def available() -> bool:
    """Whether this host has a POSIX shared-memory folder we can write."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


@contextlib.contextmanager
def segment(table: pa.Table) -> Iterator[tuple[str, int]]:
    """(name, size) of a segment holding `table`; the name is unlinked on exit."""
    data = table_to_ipc(table)
    name = f"laminardb-{os.getpid()}-c-{secrets.token_hex(8)}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        finally:
            os.close(fd)
        yield name, data.size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def take(name: str, size: int) -> pa.Table:
    """Map a client's segment, unlink its name, and read the table in it (zero-copy).

    Refused (ProtocolError) unless the name has our form, the file is a regular file of this
    user readable by nobody else, and its size is the one announced and within bounds.
    """
    if not _NAME.match(name):
        raise ProtocolError(f"invalid shared-memory segment name {name!r}")
    if not 0 < size <= MAX_SEGMENT_BYTES:
        raise ProtocolError(f"invalid shared-memory segment size {size}")
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ProtocolError(f"shared-memory segment {name} cannot be opened: {exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise ProtocolError(f"shared-memory segment {name} is not this user's file")
        if info.st_mode & 0o077:
            raise ProtocolError(f"shared-memory segment {name} is readable by others")
        if info.st_size != size:
            raise ProtocolError(
                f"shared-memory segment {name} holds {info.st_size} bytes, not {size}"
            )
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return ipc_to_table(mm)
