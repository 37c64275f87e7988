"""Fixtures of the file-ingestion tests: clusters of 1-3 workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import laminardb


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda n: f"{n}w")
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    conn = laminardb.open(":memory:", workers=request.param)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def db2() -> Iterator[Any]:
    conn = laminardb.open(":memory:", workers=2)
    yield conn
    conn.close()
