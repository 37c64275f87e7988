"""The cluster secret: ZeroMQ CURVE keys that a non-loopback service requires.

A secret file holds two Z85 CURVE secret keys, one per line: the service's and the clients'.
The service derives its public key from the first and admits exactly one client public key,
the one derived from the second; a client reads both to know whom it talks to and to prove
it holds the file. The file is created owner-only and refused when others can read it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq
import zmq.auth.thread

from laminardb.api.errors import ConnectionError


@dataclass(frozen=True)
class Secret:
    server_secret: bytes
    client_secret: bytes

    @property
    def server_public(self) -> bytes:
        return zmq.curve_public(self.server_secret)

    @property
    def client_public(self) -> bytes:
        return zmq.curve_public(self.client_secret)


def create(path: str) -> Secret:
    """Write a fresh secret to `path` (owner-only; refused if the file exists)."""
    _, server = zmq.curve_keypair()
    _, client = zmq.curve_keypair()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(server + b"\n" + client + b"\n")
    return Secret(server, client)


def load(path: str) -> Secret:
    """Read a secret file; ConnectionError when it is missing, malformed or not owner-only."""
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            lines = f.read().split()
    except OSError as exc:
        raise ConnectionError(f"cannot read the cluster secret file {path}: {exc}") from None
    if info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
        raise ConnectionError(
            f"the cluster secret file {path} must be a file readable by its owner only "
            f"(chmod 600 {path})"
        )
    if len(lines) != 2 or any(len(line) != 40 for line in lines):
        raise ConnectionError(f"{path} is not a laminardb cluster secret file")
    try:
        secret = Secret(lines[0], lines[1])
        secret.server_public  # noqa: B018 - validates the Z85 text
        secret.client_public  # noqa: B018
    except (ValueError, zmq.ZMQError) as exc:
        raise ConnectionError(f"{path} is not a laminardb cluster secret file: {exc}") from None
    return secret


def load_or_create(path: str) -> Secret:
    return load(path) if os.path.exists(path) else create(path)


def is_local(address: str) -> bool:
    """Whether a listen address is reachable from this host only (ipc://, loopback tcp)."""
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return True
    if parts.scheme != "tcp":
        return False
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _OneClient:
    """ZAP credentials check: only the clients' public key gets in."""

    def __init__(self, allowed: bytes):
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.allowed


def serve(
    context: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes], secret: Secret
) -> zmq.auth.thread.ThreadAuthenticator:
    """Make `sock` a CURVE server admitting only holders of `secret`; returns the
    authenticator thread, which the caller stops at shutdown."""
    auth = zmq.auth.thread.ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_OneClient(secret.client_public))
    sock.curve_server = True
    sock.curve_secretkey = secret.server_secret
    sock.curve_publickey = secret.server_public
    return auth


def join(sock: zmq.Socket[bytes], secret: Secret) -> None:
    """Make `sock` a CURVE client of a service using `secret`."""
    sock.curve_serverkey = secret.server_public
    sock.curve_secretkey = secret.client_secret
    sock.curve_publickey = secret.client_public
