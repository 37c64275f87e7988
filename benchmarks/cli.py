"""`bench`: the benchmark command (`python -m benchmarks`, `laminardb-cluster bench`).

Runs the workloads (streaming ingest with a keyed window aggregate, ad-hoc queries, a batch
job) on one native instance and on the cluster with each worker count, prints a table with
every figure as a ratio to the native instance of the same run, and writes
`laminardb-bench.json` (machine, settings, every measurement), `laminardb-bench.png`
(throughput against workers) and `laminardb-bench.md` (the table) to `--out`.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.harness import report, runner
from benchmarks.harness.model import summarise, to_json
from benchmarks.harness.probes import machine
from benchmarks.harness.targets import PRESETS

STEM = "laminardb-bench"


def parse_workers(text: str | None) -> list[int]:
    """`1,2,4` -> [1, 2, 4]; None -> 1..usable cores."""
    if text is None:
        return list(range(1, len(os.sched_getaffinity(0)) + 1))
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"expected worker counts like 1,2,4, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise click.BadParameter(f"worker counts must be 1 or more, got {text!r}")
    return counts


@click.command(name="bench")
@click.option(
    "--workers",
    "workers_text",
    default=None,
    metavar="N[,N...]",
    help="cluster worker counts to run  [default: 1..usable cores]",
)
@click.option("--quick", is_flag=True, help="small sizes: about a minute, for CI smoke runs")
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="folder for the JSON, PNG and Markdown",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(sorted(runner.WORKLOADS)),
    help="run only this workload (repeatable)",
)
@click.option(
    "--profile", is_flag=True, help="sample the coordinator and report where its time goes"
)
@click.option("--size", "size", default=None, type=click.Choice(sorted(PRESETS)), hidden=True)
def bench(
    workers_text: str | None,
    quick: bool,
    out_dir: str,
    only: Sequence[str],
    profile: bool,
    size: str | None,
) -> None:
    """Benchmark the cluster against one native instance, in the same run."""
    worker_counts = parse_workers(workers_text)
    sizes = PRESETS[size or ("quick" if quick else "full")]
    names = [n for n in runner.WORKLOADS if not only or n in only]
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a log or a pipe: keep table lines whole
    started = datetime.datetime.now(datetime.UTC)
    with Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=runner.steps(names, worker_counts, sizes))

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        result = runner.run(names, worker_counts, sizes, profile=profile, advance=advance)
    rows = summarise(result.measurements)
    title = (
        f"laminardb bench ({sizes.name}), workers {','.join(map(str, worker_counts))}, "
        f"{started:%Y-%m-%d %H:%M} UTC; ratios against one native instance, same run"
    )
    console.print(report.table(rows, title))
    if result.profile is not None:
        console.print(report.profile_table(result.profile))
    os.makedirs(out_dir, exist_ok=True)
    settings = {
        "size": sizes.name,
        "sizes": sizes.__dict__,
        "workers": worker_counts,
        "workloads": names,
        "profile": profile,
        "started_utc": started.isoformat(),
        "command": _command(),
    }
    doc = to_json(machine(), settings, rows, result.profile)
    paths = {ext: os.path.join(out_dir, f"{STEM}.{ext}") for ext in ("json", "png", "md")}
    with open(paths["json"], "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
    with open(paths["md"], "w") as fh:
        fh.write(report.markdown(rows))
    report.chart(rows, paths["png"], title)
    console.print(f"wrote {paths['json']}, {paths['png']} and {paths['md']}")


def _command() -> str:
    """The command line that made this run, as a user would type it."""
    import sys

    program = os.path.basename(sys.argv[0])
    if program in ("__main__.py", "cli.py"):
        program = "python -m benchmarks"
    return " ".join([program, *sys.argv[1:]])
