"""Differential oracle: every corpus query, one native instance vs the cluster.

DESIGN.md ("How to tell it works"): the same data and SQL through one `laminardb_native`
instance and through the cluster, round-robin and keyed, must give the same answers.

Tiers (each item loads one corpus file into a cluster and runs its queries; the cluster of a
(partitioning, workers) is shared by all files, see `harness.ClusterPool`):

* default, every corpus query under: round-robin with 2 workers, every table keyed on its
  first column with 3 workers (each query twice: a second run can take a path learnt from
  the first, `workers/mirror/`, `plan/ranks.py`), round-robin with 1 worker; plus a check that the native
  oracle itself is stable (rerun; rows inserted reversed, and sorted by the first column)
  and a smoke test of the whole path on a small synthetic file;
* `slow`: round-robin with 3 workers, first-column keys with 1 and 2 workers, every column
  of every table as the key (README: the other tables a query reads stay round-robin) with
  2 and 3 workers, and every table keyed on all its columns at once with 3 workers.

Queries with `df_agree: false` must match too; the summary reports their failures apart.
Mismatches of `harness.ORDER_SENSITIVE` queries (no single right answer) do not fail a test.
Summary: `$LAMINARDB_DIFF_SUMMARY` or `<tmp>/differential-oracle/summary.json`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    ORDER_SENSITIVE,
    ClusterPool,
    Doc,
    FileReport,
    NativeStandIn,
    Outcome,
    Partitioning,
    Reference,
    Summary,
    all_columns_keyed,
    check_file,
    compare_outcomes,
    corpus_files,
    each_column_keyed,
    file_tag,
    first_column_keyed,
    load,
    open_single,
    read_doc,
    round_robin,
    run_query,
)

pytestmark = pytest.mark.timeout(300)

FILES = corpus_files()


@functools.cache
def doc_of(path: Path) -> Doc:
    """Parsed corpus file, read once per session."""
    return read_doc(path)


@dataclass(frozen=True)
class Case:
    """One test item: a corpus file, a partitioning of its tables, a worker count."""

    path: Path
    partitioning: Partitioning
    workers: int

    @property
    def id(self) -> str:
        """`joins-first-key-w3`."""
        return f"{file_tag(self.path)}-{self.partitioning.name}-w{self.workers}"


def configurations(doc: Doc) -> list[tuple[Partitioning, int, bool]]:
    """(partitioning, workers, slow) of one file: the default tier first, then `slow`."""
    rr, first = round_robin(doc), first_column_keyed(doc)
    out = [(rr, 2, False), (first, 3, False), (rr, 1, False)]
    out += [(rr, 3, True), (first, 1, True), (first, 2, True)]
    out += [(p, w, True) for p in each_column_keyed(doc) for w in (2, 3)]
    out.append((all_columns_keyed(doc), 3, True))
    return out


def all_cases() -> list[Any]:
    """Every case as a pytest param, configuration-major.

    Items of one (partitioning name, workers) run one after the other, so `ClusterPool`
    keeps a single cluster alive and loads every file into it in turn.
    """
    found: list[tuple[Case, bool]] = []
    for path in FILES:
        found += [(Case(path, p, w), slow) for p, w, slow in configurations(doc_of(path))]
    order: dict[tuple[str, int], int] = {}
    for case, _ in found:
        order.setdefault((case.partitioning.name, case.workers), len(order))
    found.sort(key=lambda item: order[(item[0].partitioning.name, item[0].workers)])
    return [
        pytest.param(case, id=case.id, marks=[pytest.mark.slow] if slow else [])
        for case, slow in found
    ]


CASES = all_cases()


def mismatch_report(report: FileReport, limit: int = 25) -> str:
    """Failure message: counts, then the first `limit` mismatches."""
    lines = [
        f"{len(report.mismatches)} of {len(report.checked)} queries of {report.file} differ "
        f"({report.partitioning}, {report.workers} workers):"
    ]
    lines += [str(m) for m in report.mismatches[:limit]]
    if len(report.mismatches) > limit:
        lines.append(f"... and {len(report.mismatches) - limit} more (see the JSON summary)")
    return "\n".join(lines)


def test_corpus_is_present() -> None:
    """The oracle must not pass by running nothing: the corpus has to be found."""
    assert FILES, (
        "conformance corpus not found: put shared/ beside the repository "
        "or set LAMINARDB_CONFORMANCE_DIR"
    )


@pytest.mark.skipif(not FILES, reason="no conformance corpus in this checkout")
@pytest.mark.parametrize("path", FILES, ids=[file_tag(p) for p in FILES])
def test_native_oracle_is_stable(
    path: Path, reference: Reference, conformance_summary: Summary
) -> None:
    """The oracle answers the same on a rerun and whatever order the rows were inserted in.

    Two more native instances are loaded, one with every table's rows reversed and one with
    them sorted by the first column (what the stand-in does for `rr` and `first-key`), and
    the first one runs every query twice. A query that differs cannot judge the cluster:
    it must be listed in `harness.ORDER_SENSITIVE` (its mismatches then do not fail), else
    this test fails. Every instability is listed in the summary's `native_unstable`.
    """
    doc = doc_of(path)
    expected = reference(path)
    unexpected: list[str] = []

    def note(query: dict[str, Any], label: str, a: Outcome, b: Outcome) -> None:
        found = compare_outcomes(a, b, bool(query["ordered"]))
        if found is None:
            return
        conformance_summary.native_unstable.append(
            {"id": query["id"], "how": label, "kind": found[0], "diff": found[1]}
        )
        if query["id"] not in ORDER_SENSITIVE:
            unexpected.append(f"{query['id']} ({label}, {found[0]}): {found[1]}")

    for label, keys in (("reversed", None), ("sorted", first_column_keyed(doc).keys)):
        with NativeStandIn() as other:
            load(other, doc, keys)
            for query in doc["queries"]:
                first = run_query(other, query["sql"], watch_panics=True)
                note(query, label, expected[query["id"]], first)
                if label == "reversed":
                    second = run_query(other, query["sql"], watch_panics=True)
                    note(query, "rerun", first, second)
    assert not unexpected, "native is not deterministic on:\n" + "\n".join(unexpected)


@pytest.mark.skipif(not FILES, reason="no conformance corpus in this checkout")
@pytest.mark.parametrize("case", CASES)
def test_cluster_matches_single(
    case: Case,
    reference: Reference,
    cluster_pool: ClusterPool,
    conformance_summary: Summary,
) -> None:
    """Every selected query of the file gives the single instance's answer on the cluster."""
    doc = doc_of(case.path)
    expected = reference(case.path)
    part = case.partitioning
    chosen = [q["id"] for q in doc["queries"] if part.queries is None or q["id"] in part.queries]
    label = f"{case.id} ({part.describe()})"
    try:
        with cluster_pool.cluster(part.name, case.workers) as conn:
            report = check_file(
                None,
                conn,
                doc,
                part.keys,
                queries=chosen,
                expected=expected,
                partitioning=part.name,
                workers=case.workers,
                repeat=2 if (part.kind, case.workers) == ("first-key", 3) else 1,
            )
    except Exception:
        conformance_summary.add_failure(part.kind, case.workers, label, chosen)
        raise
    df_disagree = {q["id"] for q in doc["queries"] if q.get("df_agree") is False}
    conformance_summary.add(part.kind, case.workers, report, df_disagree)
    failing = [m for m in report.mismatches if not m.order_sensitive]
    assert not failing, mismatch_report(report)


SMOKE_DOC: Doc = {
    "_file": "smoke",
    "tables": [
        {
            "name": "diff_smoke_a",
            "columns": [{"name": "k", "type": "INT"}, {"name": "v", "type": "DOUBLE"}],
            "rows": [[i % 7 if i % 11 else None, i / 3] for i in range(200)],
        },
        {
            "name": "diff_smoke_b",
            "columns": [{"name": "k", "type": "INT"}, {"name": "s", "type": "VARCHAR"}],
            "rows": [[i, f"s{i}"] for i in range(7)],
        },
    ],
    "queries": [
        {"id": "smoke:1", "sql": "SELECT k, v FROM diff_smoke_a", "ordered": False},
        {
            "id": "smoke:2",
            "sql": "SELECT k, count(*), sum(v) FROM diff_smoke_a GROUP BY k",
            "ordered": False,
        },
        {
            "id": "smoke:3",
            "sql": "SELECT b.s, a.v FROM diff_smoke_a a JOIN diff_smoke_b b ON a.k = b.k "
            "ORDER BY a.v LIMIT 5",
            "ordered": True,
        },
        {"id": "smoke:4", "sql": "SELECT nope FROM diff_smoke_a", "ordered": False},
    ],
}


def test_harness_smoke(cluster_factory: Any) -> None:
    """The whole path on a small synthetic file: keyed load, rows, aggregate, join, error.

    Uses `cluster_factory` (a fresh cluster) and `check_file` with a live single instance,
    the way `run_file` is meant to be used outside the corpus tests.
    """
    single = open_single()
    try:
        report = check_file(single, cluster_factory(2), SMOKE_DOC, {"diff_smoke_a": ["k"]})
    finally:
        single.close()
    assert report.checked == ["smoke:1", "smoke:2", "smoke:3", "smoke:4"]
    assert not report.mismatches, mismatch_report(report)
