"""Showing a run: the terminal table, the profile table and the PNG chart.

The table has one line per (workload, case, target): rows/s, ratio to the native instance of
the same run, median and p99 latency, CPU % and peak RSS of the coordinator and of the
workers (summed), and the bytes the coordinator moved through shared memory. The chart plots
throughput against the number of workers, one panel per workload, with the native instance
(and DuckDB/polars where measured) as dashed horizontal lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from benchmarks.harness.model import CLUSTER, NATIVE, Row


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:,.1f} k"
    return f"{value:,.0f}"


def _mb(value: int | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value / 2**20:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f}"


COLUMNS = (
    "workload",
    "case",
    "target",
    "rows/s",
    "x native",
    "median ms",
    "p99 ms",
    "CPU % coord/workers",
    "RSS MB coord/workers",
    "shm MB",
)


def cells(r: Row) -> list[str]:
    """The text of one table line (pure, so the table can be checked)."""
    m = r.m
    if m.error is not None:
        return [m.workload, m.case, m.label, f"error: {m.error}", "", "", "", "", "", ""]
    cpu = _num(r.coordinator_cpu, ".0f")
    rss = _mb(r.coordinator_rss)
    if r.workers_cpu is not None:
        cpu += f" / {r.workers_cpu:.0f}"
        rss += f" / {_mb(r.workers_rss)}"
    ratio = "1.00x" if m.target == NATIVE else _num(r.ratio, ".2f") + ("x" if r.ratio else "")
    if m.note:
        ratio += f" ({m.note})"
    return [
        m.workload,
        m.case,
        m.label,
        _rate(r.rows_per_s),
        ratio,
        _ms(r.median_s),
        _ms(r.p99_s),
        cpu,
        rss,
        _mb(m.shm_bytes, 1),
    ]


def ordered(rows: Sequence[Row]) -> list[Row]:
    """Rows grouped by workload, then case (both in run order), targets in run order."""
    workloads = {w: i for i, w in enumerate(dict.fromkeys(r.m.workload for r in rows))}
    cases = {c: i for i, c in enumerate(dict.fromkeys((r.m.workload, r.m.case) for r in rows))}
    return sorted(rows, key=lambda r: (workloads[r.m.workload], cases[(r.m.workload, r.m.case)]))


def table(rows: Sequence[Row], title: str) -> Table:
    rows = ordered(rows)
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(COLUMNS):
        out.add_column(name, justify="left" if i < 3 else "right")
    previous = None
    for r in rows:
        if previous is not None and (r.m.workload, r.m.case) != previous:
            out.add_section()
        previous = (r.m.workload, r.m.case)
        out.add_row(*cells(r))
    return out


def profile_table(profile: dict[str, Any]) -> Table:
    """Coordinator time by bucket, overall and per workload, then the top functions."""
    by_workload: dict[str, Any] = profile.get("by_workload", {})
    out = Table(
        title=f"Coordinator time by cost ({profile['samples']:,} samples of the cluster runs)",
        title_justify="left",
    )
    out.add_column("where the time goes")
    out.add_column("all", justify="right")
    for name, part in by_workload.items():
        out.add_column(f"{name} ({part['samples']:,})", justify="right")
    for bucket, share in sorted(profile["buckets"].items(), key=lambda kv: -kv[1]):
        parts = [f"{part['buckets'].get(bucket, 0.0):.1%}" for part in by_workload.values()]
        out.add_row(bucket, f"{share:.1%}", *parts)
    out.add_section()
    for item in profile["top_functions"]:
        out.add_row(f"  {item['where']}", f"{item['share']:.1%}", *[""] * len(by_workload))
    return out


def markdown(rows: Sequence[Row]) -> str:
    """The table as Markdown, for the README."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * (len(COLUMNS) - 3)]
    for r in ordered(rows):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: Sequence[Row], path: str, title: str) -> None:
    """Throughput against workers, one panel per workload, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.m.workload for r in rows))
    ncols = min(2, max(1, len(workloads)))
    nrows = -(-max(1, len(workloads)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4.5 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(workloads) :]:
        ax.set_visible(False)
    for ax, workload in zip(flat, workloads, strict=False):
        by_case: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            if r.m.workload == workload and r.rows_per_s is not None:
                by_case[r.m.case].append(r)
        workers = sorted({r.m.workers for r in rows if r.m.target == CLUSTER and r.m.workers})
        for i, (case, case_rows) in enumerate(by_case.items()):
            color = f"C{i % 10}"
            cluster = sorted(
                (r.m.workers, r.rows_per_s) for r in case_rows if r.m.target == CLUSTER
            )
            if cluster:
                ax.plot(*zip(*cluster, strict=True), marker="o", color=color, label=case)
            for r in case_rows:
                if r.m.target != CLUSTER and r.rows_per_s is not None:
                    style = {"native": "--", "duckdb": ":", "polars": "-."}.get(r.m.target, ":")
                    ax.axhline(r.rows_per_s, linestyle=style, color=color, linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(workers or [1])
        ax.set_xlabel(
            "cluster workers (dashed: one native instance; dotted: DuckDB; dash-dot: polars)",
            fontsize=7,
        )
        ax.set_ylabel("rows/s")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
