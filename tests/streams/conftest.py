"""The streams tests' `slow` cases (more worker counts and orders of the same differential
checks) are deselected unless asked for (`-m slow`, any `-m` naming it, or
`LAMINARDB_SLOW=1`), as pyproject promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = str(config.getoption("markexpr", "") or "")
    if "slow" in markexpr or os.environ.get("LAMINARDB_SLOW") == "1":
        return
    slow = [i for i in items if i.get_closest_marker("slow") and _HERE in i.path.parents]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in chosen]
