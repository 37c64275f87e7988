"""Fixtures and the run summary of the differential (single instance vs cluster) tests.

* makes `from harness import ...` work whatever pytest's import mode is;
* `reference`: the single native instance's outcomes per corpus file, computed once;
* `cluster_factory(workers)`: opens the side under test (the cluster, or TEMPORARILY a
  native stand-in until `laminardb.open(..., workers=n)` exists) and closes what it opened;
  `cluster_pool` does the same but reuses a cluster across corpus files (what the
  conformance tests use: cluster start-up would otherwise dominate the run);
* the `slow` tier is deselected unless asked for (`-m slow`, any `-m` naming it, or
  `LAMINARDB_SLOW=1`): pyproject says slow cases are not in the default run;
* a machine-readable summary (pass counts by partitioning and worker count) written to
  `$LAMINARDB_DIFF_SUMMARY` or `<tmp>/differential-oracle/summary.json` and shown in the
  terminal summary. Writing it never fails the run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from harness import (  # noqa: E402 - needs the sys.path entry above
    ClusterPool,
    Connection,
    Reference,
    Summary,
    cluster_opener,
)

SUMMARY_ENV = "LAMINARDB_DIFF_SUMMARY"
SLOW_ENV = "LAMINARDB_SLOW"


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


_SUMMARY = pytest.StashKey[Summary]()


def summary_path() -> Path:
    """Where the JSON summary goes: `$LAMINARDB_DIFF_SUMMARY` or a fixed temp-dir path."""
    env = os.environ.get(SUMMARY_ENV)
    if env:
        return Path(env)
    # Not `laminardb-...`: tests/conftest.py reports new temp entries with that prefix as leaks.
    return Path(tempfile.gettempdir()) / "differential-oracle" / "summary.json"


def pytest_configure(config: pytest.Config) -> None:
    """Create the run's summary."""
    config.stash[_SUMMARY] = Summary()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect this folder's `slow` items unless the run asks for them."""
    markexpr = str(config.getoption("markexpr", "") or "")
    if "slow" in markexpr or os.environ.get(SLOW_ENV) == "1":
        return
    slow = [i for i in items if i.get_closest_marker("slow") and _HERE in i.path.parents]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in chosen]
        config.stash[_SUMMARY].slow_deselected = len(slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the JSON summary (best effort: a summary problem never fails the run)."""
    summary = session.config.stash.get(_SUMMARY, None)
    if summary is None or not (summary.results or summary.native_unstable):
        return
    try:
        path = summary_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary.as_json(), indent=1, default=str), encoding="utf-8")
    except Exception as exc:  # pragma: no cover - best effort by design
        sys.stderr.write(f"differential summary not written: {exc}\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print pass counts per configuration (visible without `-s`)."""
    summary = config.stash.get(_SUMMARY, None)
    if summary is None or not summary.results:
        return
    try:
        data = summary.as_json()
        write = terminalreporter.write_line
        terminalreporter.section(f"differential oracle ({data['engine']})")
        for key, row in data["by_config"].items():
            write(
                f"{key:<16} {row['passed']:>5}/{row['queries']:<5} passed"
                f"  (of {row['failed']} failures: {row['failed_df_agree_false']} df_agree=false,"
                f" {row['failed_order_sensitive']} order-sensitive; {row['checks']} checks,"
                f" {row['seconds']}s)"
            )
        for label in ("failed_loads", "single_rows_drift", "single_panics", "native_unstable"):
            if data[label]:
                write(f"{label}: {len(data[label])}")
        if summary.slow_deselected:
            write(
                f"slow tier: {summary.slow_deselected} items deselected ({SLOW_ENV}=1 or -m slow)"
            )
        write(f"summary: {summary_path()}")
    except Exception as exc:  # pragma: no cover - best effort by design
        terminalreporter.write_line(f"differential summary unavailable: {exc}")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def conformance_summary(pytestconfig: pytest.Config) -> Summary:
    """The run's summary (tests add their reports to it)."""
    return pytestconfig.stash[_SUMMARY]


@pytest.fixture(scope="session")
def cluster_engine(conformance_summary: Summary) -> tuple[str, Callable[[int], Connection]]:
    """(engine name, opener): `laminardb.open(":memory:", workers=n)` when it exists.

    `LAMINARDB_DIFF_STANDIN=1` swaps in the permuting native double (`harness.NativeStandIn`).
    """
    name, opener = cluster_opener()
    conformance_summary.engine = name
    return name, opener


@pytest.fixture
def cluster_factory(
    cluster_engine: tuple[str, Callable[[int], Connection]],
) -> Iterator[Callable[[int], Connection]]:
    """`cluster_factory(workers) -> connection`; every connection opened is closed after."""
    opened: list[Connection] = []

    def factory(workers: int) -> Connection:
        conn = cluster_engine[1](workers)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()


@pytest.fixture(scope="session")
def cluster_pool(
    cluster_engine: tuple[str, Callable[[int], Connection]],
) -> Iterator[ClusterPool]:
    """The session's `ClusterPool` (clusters shared across corpus files); closed at the end."""
    pool = ClusterPool(cluster_engine[1])
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def reference() -> Reference:
    """The shared `Reference` (single-instance outcomes per corpus file)."""
    return Reference()
