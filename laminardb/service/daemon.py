"""The service process: claim the runtime folder, open the cluster, serve until a signal.

Order matters for the CLI and for clean-up: the pid file is claimed first (exclusively, so
two services never share a folder), the URI file is written last (its presence means
"ready"), and every exit path (stop request, SIGTERM, SIGINT, an error) closes the cluster
and removes the state files. A crash that skips this (kill -9) leaves files that the next
`start` recognises as stale; the workers notice their parent is gone and exit on their own.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from laminardb.service import auth, logs
from laminardb.service.runtime import State, default_dir

log = logging.getLogger("laminardb.service")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 4


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m laminardb.service")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data", default=None, help="database folder (default: in memory)")
    parser.add_argument("--listen", default=None, help="ipc://PATH or tcp://HOST:PORT")
    parser.add_argument("--secret-file", default=None)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logs.configure(None, getattr(logging, str(args.log_level).upper(), logging.INFO))
    state = State(args.state_dir or default_dir())
    state.ensure()
    listen = args.listen or f"ipc://{state.socket}"
    if not auth.is_local(listen) and not args.secret_file:
        log.error("listening on %s needs --secret-file (it is reachable from other hosts)", listen)
        return EXIT_USAGE
    if state.process() is not None:
        log.error("a service already runs from %s (pid %s)", state.root, state.pid())
        return EXIT_RUNNING
    if state.is_stale():
        log.warning("cleaning state left by a service that is gone (pid %s)", state.pid())
        state.clean()
    try:
        state.claim()
    except FileExistsError:
        log.error("another service is starting from %s", state.root)
        return EXIT_RUNNING
    try:
        return _serve(args, state, listen)
    finally:
        state.clean()


def _serve(args: argparse.Namespace, state: State, listen: str) -> int:
    import laminardb
    from laminardb.service.server import Service

    secret = auth.load_or_create(args.secret_file) if args.secret_file else None
    conn = laminardb.open(args.data or ":memory:", workers=args.workers)
    try:
        service = Service(conn, listen, secret)
    except BaseException:
        conn.close()
        raise

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        state.publish(service.uri)
        log.info("serving %d workers on %s", len(conn.workers()), service.uri)
        service.serve()
    finally:
        service.close()
        log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
