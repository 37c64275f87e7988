"""Rich renderings for the CLI: result tables and the cluster status (pure functions), and
the progress bar of a long file load."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

MIN_WATERMARK = -(2**63)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def human_count(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n:,.0f}"


def watermark(value: int | None) -> str:
    return "-" if value is None or value == MIN_WATERMARK else str(value)


def uptime(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def result_table(table: pa.Table, max_rows: int = 50, title: str | None = None) -> Table:
    """An Arrow table as a rich table (at most `max_rows` rows, with a note when cut)."""
    shown = table.slice(0, max_rows)
    caption = None
    if table.num_rows > max_rows:
        caption = f"{max_rows} of {table.num_rows} rows shown"
    else:
        caption = f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    out = Table(title=title, caption=caption, header_style="bold", min_width=len(caption) + 4)
    for field in table.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        out.add_column(
            f"{field.name}\n[dim]{field.type}[/dim]", justify="right" if numeric else "left"
        )
    columns = [c.to_pylist() for c in shown.columns]
    for i in range(shown.num_rows):
        out.add_row(*("NULL" if col[i] is None else str(col[i]) for col in columns))
    return out


def status_tables(status: dict[str, Any]) -> tuple[Table, Table]:
    """(cluster summary, one row per worker) of a service's `status()`."""
    workers = status["workers"]
    per = Table(title="workers", header_style="bold")
    for name in ("shard", "pid", "alive", "rows ingested", "rows/s now", "RSS", "CPU %",
                 "watermark", "streams"):  # fmt: skip
        per.add_column(name, justify="left" if name == "alive" else "right", no_wrap=True)
    for w in workers:
        per.add_row(
            str(w["shard"]),
            str(w["pid"]),
            "[green]yes[/green]" if w["alive"] else "[red]no[/red]",
            human_count(w["rows_ingested"]),
            human_count(w["rows_per_s"]),
            human_bytes(w["rss_bytes"]),
            f"{w['cpu_percent']:.1f}",
            watermark(w["watermark"]),
            "-" if w["streams"] is None else str(w["streams"]),
        )
    alive = sum(1 for w in workers if w["alive"])
    marks = [w["watermark"] for w in workers if w["watermark"] not in (None, MIN_WATERMARK)]
    cluster = Table(title="cluster", show_header=False)
    cluster.add_column("what", style="bold")
    cluster.add_column("value")
    rows = [
        ("uri", status["uri"]),
        ("service pid", str(status["pid"])),
        ("database", status["path"]),
        ("uptime", uptime(status["uptime_s"])),
        ("workers alive", f"{alive} / {len(workers)}"),
        ("rows ingested", human_count(sum(w["rows_ingested"] for w in workers))),
        ("rows/s now", human_count(sum(w["rows_per_s"] for w in workers))),
        (
            "RSS (service + workers)",
            human_bytes(status["rss_bytes"] + sum(w["rss_bytes"] for w in workers)),
        ),
        (
            "CPU % (service + workers)",
            f"{status['cpu_percent'] + sum(w['cpu_percent'] for w in workers):.1f}",
        ),
        ("watermark (min over workers)", str(min(marks)) if marks else "-"),
        ("clients / subscriptions", f"{status['clients']} / {status['subscriptions']}"),
    ]
    for name, value in rows:
        cluster.add_row(name, value)
    return cluster, per


class LoadProgress:
    """A progress bar for a file load (`COPY ... FROM`), shown from its first report on:
    input bytes read by the workers, then the commit. Statements that load nothing never
    show it. Use as a context manager; the instance is the `progress` callback."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.reports = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.reports += 1
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("reading", total=max(total, 1))
        assert self.task is not None
        label = "committing" if phase == "commit" else "reading"
        self.bar.update(self.task, completed=done, total=max(total, 1), description=label)

    def __enter__(self) -> LoadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def json_rows(table: pa.Table) -> str:
    """The rows as one JSON array that strict parsers take: NaN and infinities are null
    (JSON has no such numbers), bytes are hex, times ISO 8601, decimals their digits as
    text, intervals {months, days, nanoseconds}."""
    return json.dumps([_json_value(row) for row in table.to_pylist()], default=str)


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and not isinstance(value, pa.MonthDayNano):
        return [_json_value(v) for v in value]
    if isinstance(value, pa.MonthDayNano):
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value
