"""A tiny smoke run of `benchmarks/broadcast_join.py`: it checks every answer against the
native one and that the broadcast plan answers, and writes its figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.broadcast_join import CASES, main

pytestmark = pytest.mark.timeout(120)


def test_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bc.json"
    args = ["--rows", "3000", "--dim", "100", "--repeat", "1", "--layout", "rr"]
    result = CliRunner().invoke(main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["figures"]
    assert [f["case"] for f in figures] == [label for label, _ in CASES]
    assert all(f["broadcast_best_ms"] > 0 and f["gather_best_ms"] > 0 for f in figures)
