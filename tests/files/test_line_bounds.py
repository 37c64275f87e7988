"""CSV cut points: after a line break outside quoted values, as close after each nominal
cut as possible; the threaded quote count gives the cuts a plain scan gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laminardb.files import splits

pytestmark = pytest.mark.timeout(120)


def reference(data: bytes, pieces: int, quoted: bool) -> list[int]:
    """Each cut: the first line end at or after max(previous cut, size * i // pieces)
    with an even number of quotes before it (any line end when not `quoted`)."""
    size = len(data)
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    ok = [e for e in ends if not quoted or data[:e].count(b'"') % 2 == 0]
    bounds = [0]
    for i in range(1, pieces):
        start = max(bounds[-1], size * i // pieces)
        bounds.append(next((e for e in ok if e > start), size))
    return [*bounds, size]


lines = st.lists(
    st.one_of(
        st.text(alphabet="ab,", max_size=8),
        st.builds(lambda t: f'"{t}"', st.text(alphabet='ab,\n""', max_size=10)),
    ),
    min_size=1,
    max_size=40,
).map(lambda cells: "\n".join(",".join(cells[i : i + 2]) for i in range(0, len(cells), 2)) + "\n")


@settings(max_examples=150, deadline=None)
@given(
    text=lines, pieces=st.integers(1, 9), quoted=st.booleans(), step=st.sampled_from([4, 1 << 24])
)
def test_cuts_match_a_plain_scan(
    tmp_path_factory: pytest.TempPathFactory, text: str, pieces: int, quoted: bool, step: int
) -> None:
    data = text.encode()
    path = tmp_path_factory.mktemp("bounds") / "rows.csv"
    path.write_bytes(data)
    old = splits._COUNT_STEP
    splits._COUNT_STEP = step  # tiny steps: every range counted in several slices, on threads
    try:
        got = splits._line_bounds(str(path), len(data), pieces, quoted)
    finally:
        splits._COUNT_STEP = old
    assert got == reference(data, pieces, quoted)


def test_a_quoted_line_break_is_never_a_cut(tmp_path: Path) -> None:
    rows = "".join(f'{i},"note {i}\nsecond line"\n' for i in range(200))
    path = tmp_path / "multi.csv"
    path.write_text(rows)
    cuts = splits._line_bounds(str(path), len(rows), 7, True)
    data = rows.encode()
    assert all(data[:c].count(b'"') % 2 == 0 for c in cuts)
    assert cuts == reference(data, 7, True)
