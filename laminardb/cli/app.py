"""`laminardb-cluster`: run laminardb as a local service and use it from the shell.

The service is a detached `python -m laminardb.service` process (spawned, never forked)
whose state files live in a per-user runtime folder (see laminardb/service/runtime.py);
every command finds the running service through them. The URI goes to stdout alone, so
`URI=$(laminardb-cluster start)` works; everything else is written to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, TextIO

import click
import psutil
from rich.console import Console

from laminardb.cli import render
from laminardb.service import auth
from laminardb.service.runtime import ENV, State, default_dir, wait_gone

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_RUNNING = 0, 1, 2, 3, 4
EXIT_CODES = """\b
Exit codes:
  0  success
  1  error (the statement failed, the service could not start or stop, ...)
  2  usage error (bad option, non-loopback --listen without --secret-file)
  3  no service is running (stale state files, if any, were reported)
  4  a service is already running (start)"""

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 120)


class _Group(click.Group):
    """Adds the `bench` command of the benchmarks package when it can be imported."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "bench"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "bench":
            try:
                from benchmarks.cli import bench
            except ImportError as exc:
                reason = str(exc)

                @click.command(name="bench", help="Run the benchmark harness (not installed).")
                def missing() -> None:
                    err.print(f"[red]the benchmark harness is not importable:[/red] {reason}")
                    sys.exit(EXIT_ERROR)

                return missing
            command: click.Command = bench
            return command
        return super().get_command(ctx, name)


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.option(
    "--state-dir",
    envvar=ENV,
    default=None,
    metavar="DIR",
    help=f"runtime folder of the service's state files [env {ENV}; default "
    "$XDG_RUNTIME_DIR/laminardb or /tmp/laminardb-<uid>]",
)
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None) -> None:
    """Run laminardb as a local service that several processes share.

    \b
      laminardb-cluster start --workers 2      # prints the URI
      laminardb-cluster status
      laminardb-cluster sql "SELECT 1"
      laminardb-cluster stop

    In Python: laminardb.connect(URI) gives the Connection API of the service.
    """
    ctx.obj = State(os.path.abspath(state_dir or default_dir()))


def _secret_option(f: Any) -> Any:
    return click.option(
        "--secret-file",
        envvar="LAMINARDB_SECRET_FILE",
        default=None,
        type=click.Path(dir_okay=False),
        help="the cluster secret (required when the service listens beyond loopback) "
        "[env LAMINARDB_SECRET_FILE]",
    )(f)


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="worker processes [default: one per core]",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="database folder (persistent) [default: in memory]",
)
@click.option(
    "--listen",
    default=None,
    metavar="ADDR",
    help="ipc://PATH or tcp://HOST:PORT [default: ipc:// socket in the state folder]",
)
@_secret_option
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="seconds to wait for the service to be ready",
)
@click.pass_obj
def start(
    state: State,
    workers: int | None,
    data: str | None,
    listen: str | None,
    secret_file: str | None,
    timeout: float,
) -> None:
    """Start the service in the background and print its URI.

    Listening on anything but loopback or ipc:// needs --secret-file (created, owner-only,
    when it does not exist); clients then need the same file.
    """
    if listen is not None and not auth.is_local(listen) and not secret_file:
        raise click.UsageError(
            f"--listen {listen} is reachable from other hosts: add --secret-file"
        )
    state.ensure()
    if state.process() is not None:
        err.print(f"a service is already running: pid {state.pid()}, {state.uri() or '(starting)'}")
        sys.exit(EXIT_RUNNING)
    if state.is_stale():
        err.print(
            f"[yellow]cleaning the state of a service that is gone (pid {state.pid()})[/yellow]"
        )
        state.clean()
    command = [sys.executable, "-m", "laminardb.service", "--state-dir", state.root]
    if workers is not None:
        command += ["--workers", str(workers)]
    if data is not None:
        command += ["--data", os.path.abspath(data)]
    if listen is not None:
        command += ["--listen", listen]
    if secret_file is not None:
        command += ["--secret-file", os.path.abspath(secret_file)]
    fd = os.open(state.log_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,  # detached: no signal of this terminal reaches it
            close_fds=True,
        )
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while (uri := state.uri()) is None:
        code = proc.poll()
        if code is not None:
            err.print(f"[red]the service exited with code {code}[/red]; its log:\n{_tail(state)}")
            sys.exit(code if code in (EXIT_USAGE, EXIT_RUNNING) else EXIT_ERROR)
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            state.clean()
            err.print(
                f"[red]the service was not ready within {timeout:.0f} s[/red]:\n{_tail(state)}"
            )
            sys.exit(EXIT_ERROR)
        time.sleep(0.05)
    proc.returncode = 0  # it runs on by design: no "still running" warning at exit
    err.print(f"laminardb service started: pid {proc.pid}, log {state.log_file}")
    click.echo(uri)


def _tail(state: State, lines: int = 20) -> str:
    try:
        with open(state.log_file) as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _running(state: State) -> str:
    """The URI of the running service, or exit 3 (after reporting stale state)."""
    uri = state.uri()
    if state.process() is None or uri is None:
        if state.is_stale():
            err.print(
                f"no service is running; state files of a dead one (pid {state.pid()}) are in "
                f"{state.root} (the next start cleans them)"
            )
        else:
            err.print(f"no laminardb service is running (state folder {state.root})")
        sys.exit(EXIT_NOT_RUNNING)
    return uri


def _connect(state: State, secret_file: str | None) -> Any:
    from laminardb.api.errors import LaminarError
    from laminardb.service.client import RemoteConnection

    uri = _running(state)
    try:
        return RemoteConnection(uri, secret_file=secret_file)
    except LaminarError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(EXIT_ERROR)


@cli.command(epilog=EXIT_CODES)
@_secret_option
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@click.pass_obj
def status(state: State, secret_file: str | None, as_json: bool) -> None:
    """Show the service and each worker: pid, alive, rows, rows/s, RSS, CPU %, watermark,
    streams."""
    with _connect(state, secret_file) as conn:
        info = conn.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    cluster, workers = render.status_tables(info)
    out.print(cluster)
    out.print(workers)


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="seconds to wait for a clean exit before killing it",
)
@click.pass_obj
def stop(state: State, timeout: float) -> None:
    """Stop the service and its workers (nothing is left in /dev/shm): SIGTERM, then a clean
    shutdown; killed if it has not exited after --timeout."""
    proc = state.process()
    if proc is None:
        stale = state.is_stale()
        state.clean()
        err.print("no service is running" + (" (stale state files removed)" if stale else ""))
        sys.exit(EXIT_NOT_RUNNING)
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGTERM)
    if not wait_gone(proc, timeout):
        err.print(f"[red]the service did not stop within {timeout:.0f} s: killing it[/red]")
        with contextlib.suppress(psutil.Error):
            proc.kill()
            wait_gone(proc, 10)
        state.clean()
        sys.exit(EXIT_ERROR)
    state.clean()
    err.print(f"laminardb service stopped (pid {proc.pid})")


_EXIT_WORDS = ("exit", "quit", r"\q")


@cli.command(epilog=EXIT_CODES)
@click.argument("statement", required=False)
@click.option(
    "--file",
    "-f",
    "script",
    type=click.File("r", encoding="utf-8"),
    help="run the statements of this SQL file (- for standard input)",
)
@_secret_option
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="rows shown per result",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.pass_obj
def sql(
    state: State,
    statement: str | None,
    script: TextIO | None,
    secret_file: str | None,
    max_rows: int,
    fmt: str,
) -> None:
    """Run STATEMENT (several separated by `;` run in order, each result shown), the
    statements of a file (`-f`, or piped in), or without either an interactive shell: a line
    at a time, `exit` or Ctrl-D to leave. A statement that fails stops a statement list or
    script with exit code 1; the statements before it keep their effects."""
    if statement is not None and script is not None:
        raise click.UsageError("give a STATEMENT or --file, not both")
    if script is None and statement is None and not sys.stdin.isatty():
        script = sys.stdin
    text = _until_exit(script.read()) if script is not None else statement
    with _connect(state, secret_file) as conn:
        if text is not None:
            if script is not None and _empty(text):
                sys.exit(EXIT_OK)  # an empty script does nothing, as in other SQL shells
            sys.exit(EXIT_OK if _run(conn, text, max_rows, fmt) else EXIT_ERROR)
        err.print(f"connected to {conn.path}; `exit` or Ctrl-D to leave")
        while True:
            try:
                line = click.prompt("laminardb", prompt_suffix="> ", default="", show_default=False)
            except (EOFError, click.Abort):
                break
            text = line.strip()
            if text.lower() in _EXIT_WORDS:
                break
            if text:
                _run(conn, text, max_rows, fmt)


def _until_exit(script: str) -> str:
    """The script up to a line that is only `exit`, `quit` or `\\q` between statements, as
    the shell reads it (a column named `quit` on a line of its own, or such a line inside a
    string, is part of a statement)."""
    from laminardb.api.errors import LaminarError
    from laminardb.plan.tokens import tokenize

    lines = script.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().lower() not in _EXIT_WORDS:
            continue
        before = "".join(lines[:i])
        try:
            found = list(tokenize(before))
        except LaminarError:  # inside a string or a comment
            continue
        if not found or found[-1].is_punct(";"):
            return before
    return script


def _empty(script: str) -> bool:
    """Whether a script holds no statement (blank, or comments only)."""
    from laminardb.api.errors import LaminarError
    from laminardb.plan.tokens import split_statements

    try:
        return not split_statements(script)
    except LaminarError:
        return False  # the run says what is wrong with it


def _run(conn: Any, text: str, max_rows: int, fmt: str) -> bool:
    """Run each statement of `text` in order, showing each result; False at the first
    that fails (the rest are not run)."""
    from laminardb.api.errors import LaminarError
    from laminardb.plan.tokens import split_statements

    try:
        pieces = split_statements(text) or [text]  # the engine words the empty one's error
    except LaminarError as exc:
        err.print(f"[red]{type(exc).__name__}: {exc}[/red]")
        return False
    for number, piece in enumerate(pieces, start=1):
        if not _run_one(conn, piece, max_rows, fmt):
            if len(pieces) > 1:
                first = piece.splitlines()[0][:60]
                err.print(
                    f"[red]statement {number} of {len(pieces)} failed ({first}); "
                    f"{len(pieces) - number} not run[/red]"
                )
            return False
    return True


def _run_one(conn: Any, statement: str, max_rows: int, fmt: str) -> bool:
    from laminardb.api.errors import LaminarError

    try:
        with render.LoadProgress(err) as watch, conn.watching(watch):
            result = conn.execute(statement)
    except (LaminarError, TypeError, ValueError) as exc:
        err.print(f"[red]{type(exc).__name__}: {exc}[/red]")
        return False
    rows = result.to_query_result()
    if rows is None:
        if result.result_type == "ddl":
            err.print(f"{result.ddl_type} {result.ddl_object}")
        else:
            err.print(f"{result.rows_affected} row(s) affected")
        return True
    table = rows.to_arrow()
    if fmt == "json":
        click.echo(render.json_rows(table))
    elif fmt == "csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        try:
            pacsv.write_csv(table, sink)
        except pa.ArrowException as exc:  # a nested, interval or binary column
            kinds = ", ".join(f"{f.name} ({f.type})" for f in table.schema)
            err.print(
                f"[red]--format csv cannot write these columns: {kinds} ({exc}); "
                "use --format json[/red]"
            )
            return False
        sink.flush()
    else:
        out.print(render.result_table(table, max_rows))
    return True


def main() -> None:
    """Entry point of the `laminardb-cluster` script."""
    cli(prog_name="laminardb-cluster")


if __name__ == "__main__":  # pragma: no cover
    main()
