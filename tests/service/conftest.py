"""Fixtures of the service tests: a CLI bound to a fresh runtime folder, and a running service
(2 workers) that is always stopped and removed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from service_support import Cli, make_state_dir


@pytest.fixture
def cli() -> Iterator[Cli]:
    """A CLI bound to a fresh runtime folder (no service started)."""
    c = Cli(make_state_dir())
    try:
        yield c
    finally:
        c.force_stop()
        shutil.rmtree(c.state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[Cli, str]]:
    """A running 2-worker service shared by one module's tests: (cli, uri)."""
    c = Cli(make_state_dir())
    try:
        done = c.run("start", "--workers", "2")
        assert done.returncode == 0, done.stderr
        yield c, done.stdout.strip()
    finally:
        c.force_stop()
        shutil.rmtree(c.state_dir, ignore_errors=True)
