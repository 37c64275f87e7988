"""Differential oracle for the distributed planner: planned queries vs one native instance.

Every corpus query that `split.plan` splits runs on the cluster through the planner (not
the gather path) and must give the single instance's answer (`harness.compare_outcomes`,
column types included); on top, synthetic cases check the schema exactly (names, types,
nullability) on the edges: empty relations, NULL groups, all-NULL columns, top-N with
OFFSET, HAVING, expressions over aggregates, keyed and unkeyed sources, and queries the
native engine rejects (which must hand over to the gather path and raise the same error).

Until the coordinator calls the planner itself, `planner_patch` routes `_run_query` through
`distributed.execute` and records what happened, so a plan that silently fell back to the
gather path shows up as a failure here rather than as a pass.
"""

from __future__ import annotations

import collections
import functools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from harness import (
    CORPUS_TYPES,
    ORDER_SENSITIVE,
    Doc,
    Outcome,
    compare_outcomes,
    corpus_files,
    first_column_keyed,
    load,
    open_single,
    read_doc,
    round_robin,
    run_query,
)

import laminardb
from laminardb.api.connection import Connection
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import distributed, split

pytestmark = pytest.mark.timeout(120)

FILES = corpus_files()

KNOWN_FALLBACKS = (
    "the query aggregates",
    "no SQL type declares",
    "a worker's engine swallowed a run-time error",
)
"""Fallback reasons that are right for a corpus query: a function sqlglot does not know is
an aggregate (`approx_median`, `var`, `mean`), which only the probe over empty input tells;
a distinct-count argument of a type the merge engine cannot declare (`Utf8View`); a query
that fails while it runs (`concat_ws` with a `Utf8View` separator), which native answers
with nothing. The gathered answer is still compared with native's."""


@dataclass
class Event:
    """What the patched `_run_query` did with one query."""

    sql: str
    rule: split.Rule | None
    error: BaseException | None = None


@contextmanager
def planner_patch() -> Iterator[list[Event]]:
    """Route every cluster query through the planner while the block runs (see module doc)."""
    events: list[Event] = []
    original = Connection._run_query

    def run_query(self: Connection, sql: str) -> pa.Table:
        self._router.flush()
        found = distributed.cached_plan(sql, self._catalog)
        if found is None:
            events.append(Event(sql, None))
            return original(self, sql)
        try:
            result = distributed.execute(
                found, self._catalog, distributed.cluster_fetch(self._cluster)
            )
        except Exception as exc:
            events.append(Event(sql, found.rule, exc))
            return original(self, sql)
        events.append(Event(sql, found.rule))
        log_query = getattr(self, "_log_query", None)
        if log_query is not None:
            log_query(sql)
        return result

    Connection._run_query = run_query  # type: ignore[method-assign]
    try:
        yield events
    finally:
        Connection._run_query = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def events() -> Iterator[list[Event]]:
    """The planner events of this module's queries (the patch is active for the module)."""
    with planner_patch() as found:
        yield found


@pytest.fixture(scope="module")
def rr2(events: list[Event]) -> Iterator[Any]:
    """A 2-worker cluster that splits every unkeyed insert over both workers."""
    conn = laminardb.open(":memory:", workers=2, split_rows=1)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def keyed3(events: list[Event]) -> Iterator[Any]:
    """A 3-worker cluster for the corpus keyed on every table's first column."""
    conn = laminardb.open(":memory:", workers=3, split_rows=1)
    yield conn
    conn.close()


def planned(conn: Any, events: list[Event], sql: str) -> tuple[Outcome, Event]:
    """Run `sql` on the cluster; the planner's event for it."""
    events.clear()
    outcome = run_query(conn, sql)
    assert len(events) == 1, f"expected one query event, got {events}"
    return outcome, events[0]


# ---------------------------------------------------------------------------- the corpus


@functools.cache
def doc_of(path: Path) -> Doc:
    """A corpus file, read once."""
    return read_doc(path)


def catalog_of(doc: Doc, keys: dict[str, list[str]]) -> Catalog:
    """The coordinator's catalog after `load(conn, doc, keys)` (to plan without a cluster)."""
    catalog = Catalog()
    for table in doc["tables"]:
        schema = pa.schema([(c["name"], CORPUS_TYPES[c["type"]]) for c in table["columns"]])
        key = tuple(keys.get(table["name"], ()))
        catalog.add(Relation(table["name"], "source", schema, "", partition_by=key))
    return catalog


KEYS: dict[str, Callable[[Doc], dict[str, list[str]]]] = {
    "rr": lambda doc: round_robin(doc).keys,
    "first-key": lambda doc: first_column_keyed(doc).keys,
}


@functools.cache
def plans_of(path: Path, partitioning: str) -> dict[str, split.Plan | None]:
    """The plan of every query of a corpus file under one of the `KEYS` partitionings."""
    doc = doc_of(path)
    catalog = catalog_of(doc, KEYS[partitioning](doc))
    return {q["sql"]: split.plan(q["sql"], catalog) for q in doc["queries"]}


_SINGLE: dict[tuple[Path, str], Outcome] = {}


def single_outcome(path: Path, sql: str) -> Outcome:
    """The single instance's outcome, computed once per file for every query any rule plans."""
    if (path, sql) not in _SINGLE:
        doc = doc_of(path)
        wanted = {q for kind in KEYS for q, found in plans_of(path, kind).items() if found}
        single = open_single()
        try:
            load(single, doc)
            _SINGLE.update({(path, q): run_query(single, q) for q in wanted | {sql}})
        finally:
            single.close()
    return _SINGLE[(path, sql)]


@dataclass
class Tally:
    """Coverage and agreement of one configuration over the corpus."""

    rules: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        covered = sum(n for r, n in self.rules.items() if r != "not planned")
        return (
            f"{covered} corpus queries planned {dict(self.rules)}, "
            f"{len(self.mismatches)} mismatches, {len(self.fallbacks)} unexpected fallbacks, "
            f"{self.seconds:.1f}s"
        )

    def report(self, label: str) -> str:
        return "\n".join([f"{label}: {self.line()}", *self.fallbacks, *self.mismatches[:20]])


def check_corpus(conn: Any, events: list[Event], partitioning: str, only: set[split.Rule]) -> Tally:
    """Compare every corpus query whose plan (under the `KEYS` partitioning) uses a rule of
    `only`; a file with none is not even loaded."""
    tally = Tally()
    start = time.perf_counter()
    for path in FILES:
        doc = doc_of(path)
        plans = plans_of(path, partitioning)
        chosen = []
        for query in doc["queries"]:
            found = plans[query["sql"]]
            if found is not None and found.rule in only:
                chosen.append(query)
            elif found is None:
                tally.rules["not planned"] += 1
        if not chosen:
            continue
        load(conn, doc, KEYS[partitioning](doc))
        for query in chosen:
            outcome, event = planned(conn, events, query["sql"])
            assert event.rule is not None
            if event.error is not None:
                tally.rules[f"{event.rule.value} (handed to gather)"] += 1
                if not str(event.error).startswith(KNOWN_FALLBACKS):
                    tally.fallbacks.append(f"{query['id']}: {event.error!r}")
                    continue
            else:
                tally.rules[event.rule.value] += 1
            expected = single_outcome(path, query["sql"])
            found = compare_outcomes(expected, outcome, bool(query["ordered"]))
            if found is not None and query["id"] not in ORDER_SENSITIVE:
                tally.mismatches.append(f"{query['id']} ({found[0]}): {found[1]}\n  {query['sql']}")
    tally.seconds = time.perf_counter() - start
    return tally


@pytest.mark.skipif(not FILES, reason="no conformance corpus in this checkout")
def test_corpus_round_robin_two_workers(rr2: Any, events: list[Event]) -> None:
    """Every planned corpus query, all tables spread round-robin over 2 workers."""
    tally = check_corpus(rr2, events, "rr", set(split.Rule))
    print(f"\n{tally.report('round-robin, 2 workers')}")
    assert not tally.mismatches and not tally.fallbacks, tally.report("round-robin")
    assert tally.rules["pushdown"] > 300 and tally.rules["two-phase"] > 300, tally.line()


@pytest.mark.skipif(not FILES, reason="no conformance corpus in this checkout")
def test_corpus_first_column_keyed_three_workers(keyed3: Any, events: list[Event]) -> None:
    """Every corpus query that groups by the key when every table is keyed on its first
    column, over 3 workers (the other rules do not depend on the partitioning)."""
    tally = check_corpus(keyed3, events, "first-key", {split.Rule.KEYED_GROUP})
    print(f"\n{tally.report('first column keyed, 3 workers')}")
    assert not tally.mismatches and not tally.fallbacks, tally.report("first-key")
    assert tally.rules["keyed-group"] > 100, tally.line()


# ---------------------------------------------------------------------------- edge cases


SCHEMA = pa.schema(
    [
        ("k", pa.int32()),
        ("g", pa.string()),
        ("v", pa.int64()),
        ("d", pa.float64()),
        ("b", pa.bool_()),
        ("n", pa.int32()),
        ("ts", pa.timestamp("us")),
    ]
)


def rows(count: int) -> pa.Table:
    """Deterministic rows with NULL keys and groups, an all-NULL column `n` and no ties in
    `d` (so every top-N below has one right answer)."""
    return pa.table(
        {
            "k": pa.array([None if i % 13 == 0 else i % 7 for i in range(count)], pa.int32()),
            "g": [None if i % 11 == 0 else f"g{i % 5}" for i in range(count)],
            "v": pa.array([None if i % 9 == 0 else i * 3 - 50 for i in range(count)], pa.int64()),
            "d": [None if i % 17 == 0 else (i * 7919 % 1000) / 8 + i / 1e6 for i in range(count)],
            "b": [None if i % 6 == 0 else i % 4 == 0 for i in range(count)],
            "n": pa.array([None] * count, pa.int32()),
            "ts": pa.array(
                [1_700_000_000_000_000 + i * 1_000_003 for i in range(count)], pa.int64()
            ).cast(pa.timestamp("us")),
        },
        schema=SCHEMA,
    )


EDGE_QUERIES = [
    "SELECT k, v FROM {t} WHERE v > 10",
    "SELECT * FROM {t} WHERE k IS NULL",
    "SELECT k, d FROM {t} ORDER BY d DESC, ts LIMIT 7",
    "SELECT g, d FROM {t} ORDER BY d, ts DESC LIMIT 5 OFFSET 3",
    "SELECT k FROM {t} ORDER BY d + 1 DESC NULLS LAST, ts LIMIT 4",
    "SELECT g AS x, d AS y FROM {t} ORDER BY y NULLS FIRST, 1, ts LIMIT 6",
    "SELECT v FROM {t} ORDER BY -v",
    "SELECT k FROM {t} ORDER BY k",
    "SELECT count(*), count(v), count(n), sum(v), sum(n), min(g), max(d), avg(v), avg(n) FROM {t}",
    "SELECT sum(k) + 1, count(*) * 2, avg(d) / 2 FROM {t} WHERE k > 100",
    "SELECT k, count(*), sum(v), avg(d), min(ts), max(b) FROM {t} GROUP BY k",
    "SELECT g, count(*) AS c, sum(v) FROM {t} GROUP BY g HAVING count(*) > 10",
    "SELECT g AS x, count(*) AS c FROM {t} GROUP BY x HAVING c > 10 ORDER BY c DESC, x LIMIT 3",
    "SELECT k, sum(v) / count(v), max(d) - min(d) FROM {t} GROUP BY k ORDER BY 2 DESC LIMIT 4",
    "SELECT k, g, count(*) FROM {t} GROUP BY k, g ORDER BY count(*) DESC, k, g LIMIT 5",
    "SELECT b, avg(v), arrow_typeof(avg(v)), arrow_typeof(count(*)) FROM {t} GROUP BY b",
    "SELECT n, count(*), sum(n) FROM {t} GROUP BY n",
    "SELECT k + 1 AS k1, count(*) FROM {t} GROUP BY k + 1",
    "SELECT count(*) FROM {t} GROUP BY k ORDER BY count(*) LIMIT 3",
    "SELECT g, bool_and(b), bool_or(b), count(DISTINCT v), approx_distinct(v) FROM {t} GROUP BY g",
    "SELECT count(DISTINCT g), approx_distinct(g), count(*), sum(k) FROM {t} WHERE v > 0",
    "SELECT b, count(DISTINCT k % 3) AS n, avg(v) FROM {t} GROUP BY b HAVING count(*) > 1",
    "SELECT k, sum(v) FILTER (WHERE d > 50), count(*) FILTER (WHERE b), "
    "max(g) FILTER (WHERE g <> 'g1') FROM {t} GROUP BY k",
    "SELECT DISTINCT g, b FROM {t}",
    "SELECT DISTINCT k FROM {t} ORDER BY k DESC LIMIT 3",
    "SELECT DISTINCT g AS x FROM {t} WHERE v > 5 ORDER BY 1 NULLS FIRST LIMIT 4 OFFSET 1",
    "SELECT g, sum(d) AS s FROM {t} GROUP BY g ORDER BY s DESC LIMIT 2",
    "SELECT g, count(*) AS c, min(ts) FROM {t} GROUP BY g ORDER BY c, g NULLS FIRST LIMIT 3",
    "SELECT g, var_samp(v), var_pop(v), stddev(d), stddev_pop(d), count(*) FROM {t} GROUP BY g",
    "SELECT var_samp(d), stddev_samp(v), var_pop(k), stddev_pop(n) FROM {t} WHERE v > 0",
    "SELECT v, var_samp(d), var_pop(d), stddev(k) FROM {t} GROUP BY v",
    "SELECT b, stddev(v) AS s FROM {t} GROUP BY b ORDER BY s DESC LIMIT 2",
    "SELECT g, median(v), count(*), max(d) FROM {t} GROUP BY g",
    "SELECT b, median(d) AS m FROM {t} WHERE v < 700 GROUP BY b ORDER BY m DESC NULLS LAST LIMIT 2",
    "SELECT median(k), count(DISTINCT k), sum(v), min(g) FROM {t}",
    "SELECT k, median(v - 7), count(*) FROM {t} GROUP BY k",
    "SELECT g, median(n) FROM {t} GROUP BY g",
    "SELECT g, percentile_cont(v, 0.25), count(*), max(d) FROM {t} GROUP BY g",
    "SELECT b, percentile_cont(d, 0.9) AS p FROM {t} WHERE v < 700 GROUP BY b "
    "ORDER BY p DESC NULLS LAST LIMIT 2",
    "SELECT percentile_cont(k, 0.1234567), percentile_cont(k, 1), count(DISTINCT k) FROM {t}",
    "SELECT k, percentile_cont(n, 0.5) FROM {t} GROUP BY k",
    "SELECT g, percentile_cont(v % 7, 0.4) AS p, percentile_cont(v % 7, 0.6) * 2 AS q "
    "FROM {t} GROUP BY g ORDER BY p, g LIMIT 9",
    "SELECT g, percentile_cont(0.3) WITHIN GROUP (ORDER BY d DESC) AS p FROM {t} GROUP BY g "
    "ORDER BY p DESC LIMIT 10",
    "SELECT percentile_cont(0.75) WITHIN GROUP (ORDER BY v), count(*) FROM {t}",
    "SELECT percentile_cont(v, 2) FROM {t}",
    "SELECT g, max(d / (v - v)), min(d / (v - v)), max(-d) FROM {t} GROUP BY g",
    "SELECT * FROM {t} WHERE k = 3",
    "SELECT g, count(*), sum(v) FROM {t} WHERE k IN (1, 4) GROUP BY g",
    "SELECT k, count(*), max(d) FROM {t} WHERE k = 2 GROUP BY k",
    "SELECT nope FROM {t}",
    "SELECT k, count(*) FROM {t} GROUP BY k ORDER BY k",
    "SELECT k, v FROM {t} GROUP BY k",
]
"""Shapes of the rules and their edges; the last three (and the fraction 2) are native errors."""


class Recorder:
    """A connection wrapper for `run_query` that keeps the last answer's Arrow schema."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.schema: pa.Schema | None = None
        self.table = pa.table({})

    def sql(self, query: str) -> Recorder:
        self.schema = None
        self.table = self.conn.sql(query).to_arrow()
        self.schema = self.table.schema
        return self

    def to_arrow(self) -> pa.Table:
        return self.table

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@pytest.mark.parametrize("keyed", [False, True], ids=["round-robin", "keyed"])
@pytest.mark.parametrize("empty", [False, True], ids=["rows", "empty"])
def test_edge_cases_match_exactly(rr2: Any, events: list[Event], keyed: bool, empty: bool) -> None:
    """The answer and its schema (names, types, nullability) equal the single instance's,
    and each query the native engine rejects is rejected with the same error class."""
    name = f"planner_edge_{'k' if keyed else 'r'}_{'e' if empty else 'f'}"
    ddl = f"CREATE SOURCE {name} (k INT, g VARCHAR, v BIGINT, d DOUBLE, b BOOLEAN, n INT, ts TIMESTAMP)"
    data = rows(0 if empty else 500)
    single = open_single()
    try:
        single.execute(ddl)
        rr2.execute(ddl + (" PARTITION BY (k)" if keyed else ""))
        if data.num_rows:
            single.insert(name, data)
            rr2.insert(name, data)
        mine, theirs = Recorder(rr2), Recorder(single)
        for template in EDGE_QUERIES:
            sql = template.format(t=name)
            expected = run_query(theirs, sql)
            outcome, event = planned(mine, events, sql)
            found = compare_outcomes(expected, outcome, "ORDER BY" in sql)
            assert found is None, (sql, found)
            if expected.error is not None:
                assert event.rule is None or event.error is not None, sql
                continue
            assert event.rule is not None and event.error is None, (sql, event)
            assert mine.schema is not None and theirs.schema is not None
            assert mine.schema.equals(theirs.schema), (sql, mine.schema, theirs.schema)
    finally:
        single.close()


def test_a_changed_relation_is_planned_again(rr2: Any, events: list[Event]) -> None:
    """Cached plans and probes follow the catalog: the same SQL over a source dropped and
    created again with another key (and another column type) is planned afresh."""
    sql = "SELECT k, count(*), sum(v) FROM planner_again GROUP BY k"
    data = pa.table({"k": pa.array([1, 2, 2, None], pa.int32()), "v": [1, 2, 3, 4]})
    rr2.execute("CREATE SOURCE planner_again (k INT, v BIGINT) PARTITION BY (k)")
    rr2.insert("planner_again", data)
    keyed, event = planned(rr2, events, sql)
    assert event.rule is split.Rule.KEYED_GROUP and event.error is None
    rr2.execute("DROP SOURCE planner_again")
    rr2.execute("CREATE SOURCE planner_again (k INT, v DOUBLE)")
    rr2.insert("planner_again", data)
    spread, event = planned(rr2, events, sql)
    assert event.rule is split.Rule.TWO_PHASE and event.error is None
    assert keyed.rows is not None and spread.rows is not None
    assert sorted(keyed.rows, key=str) == [(1, 1, 1), (2, 2, 5), (None, 1, 4)]
    assert sorted(spread.rows, key=str) == [(1, 1, 1.0), (2, 2, 5.0), (None, 1, 4.0)]
    assert spread.types == ("int32", "int64", "double")


def random_queries(table: str, seed: int, count: int) -> list[str]:
    """Queries from a small grammar of the three rules' shapes (deterministic per seed)."""
    rng = random.Random(seed)
    numeric = ["k", "v", "d", "k + v", "abs(v)", "CAST(k AS DOUBLE)"]
    groups = ["k", "g", "b", "k % 3", "upper(g)"]
    aggregates = ["count(*)", "count({c})", "sum({c})", "min({c})", "max({c})", "avg({c})"]
    filters = ["", " WHERE v > 0", " WHERE g IS NOT NULL", " WHERE k IN (1, 2, 3)", " WHERE d < 50"]
    out = []
    for _ in range(count):
        where = rng.choice(filters)
        shape = rng.choice(["rows", "global", "group"])
        aggs = [
            rng.choice(aggregates).format(c=rng.choice(numeric)) for _ in range(rng.randint(1, 3))
        ]
        if shape == "rows":
            cols = rng.sample(["k", "g", "v", "d", "b", "ts", "v * 2 AS w"], rng.randint(1, 4))
            limit = f" LIMIT {rng.randint(0, 20)}"
            order = (
                f" ORDER BY ts {rng.choice(['ASC', 'DESC'])}{limit}" if rng.random() < 0.7 else ""
            )
            out.append(f"SELECT {', '.join(cols)} FROM {table}{where}{order}")
        elif shape == "global":
            out.append(f"SELECT {', '.join(aggs)} FROM {table}{where}")
        else:
            keys = rng.sample(groups, rng.randint(1, 2))
            having = " HAVING count(*) > 5" if rng.random() < 0.3 else ""
            order = ""
            if rng.random() < 0.5:
                direction = rng.choice(["", " DESC", " NULLS FIRST"])
                order = f" ORDER BY {', '.join(str(i + 1) for i in range(len(keys)))}{direction} LIMIT 5"
            select = ", ".join(keys + aggs)
            out.append(
                f"SELECT {select} FROM {table}{where} GROUP BY {', '.join(keys)}{having}{order}"
            )
    return out


@pytest.mark.parametrize("keyed", [False, True], ids=["round-robin", "keyed"])
def test_random_queries(rr2: Any, events: list[Event], keyed: bool) -> None:
    """60 generated queries per partitioning: each one native answers is planned and gives
    the single instance's answer (one native rejects is rejected alike)."""
    name = f"planner_random_{'k' if keyed else 'r'}"
    ddl = f"CREATE SOURCE {name} (k INT, g VARCHAR, v BIGINT, d DOUBLE, b BOOLEAN, n INT, ts TIMESTAMP)"
    single = open_single()
    try:
        single.execute(ddl)
        rr2.execute(ddl + (" PARTITION BY (k)" if keyed else ""))
        single.insert(name, rows(300))
        rr2.insert(name, rows(300))
        planned_count = 0
        for sql in random_queries(name, seed=20 + keyed, count=60):
            expected = run_query(single, sql)
            outcome, event = planned(rr2, events, sql)
            found = compare_outcomes(expected, outcome, "ORDER BY" in sql)
            assert found is None, (sql, found)
            if expected.error is None:
                assert event.rule is not None and event.error is None, (sql, event)
                planned_count += 1
        assert planned_count > 50
    finally:
        single.close()


def test_integer_sums_wrap_like_native(rr2: Any, events: list[Event]) -> None:
    """Native SUM over BIGINT wraps around on overflow; wrapping addition is associative, so
    per-worker partial sums merge to the same value, while AVG stays in floating point."""
    data = pa.table({"k": pa.array([1, 2, 3, 4, 5], pa.int32()), "v": [2**62] * 4 + [-5]})
    sql = "SELECT sum(v), avg(v), count(*), sum(v) / count(*) FROM planner_wrap"
    single = open_single()
    try:
        for conn in (single, rr2):
            conn.execute("CREATE SOURCE planner_wrap (k INT, v BIGINT)")
            conn.insert("planner_wrap", data)
        expected = run_query(single, sql)
        outcome, event = planned(rr2, events, sql)
        assert event.rule is split.Rule.TWO_PHASE and event.error is None
        assert compare_outcomes(expected, outcome, True) is None
        assert expected.rows == [(-5, pytest.approx((4 * 2**62 - 5) / 5), 5, -1)]
    finally:
        single.close()


def test_point_lookups_ask_the_owning_worker_only(rr2: Any, events: list[Event]) -> None:
    """`k = literal` on a keyed source runs the query as written on the one worker that owns
    the key; an IN-list asks the owners only; both give the single instance's answers."""
    data = rows(200)
    single = open_single()
    try:
        for conn, suffix in ((single, ""), (rr2, " PARTITION BY (k)")):
            conn.execute(f"CREATE SOURCE planner_point (k INT, g VARCHAR, v BIGINT){suffix}")
            conn.insert("planner_point", data.select(["k", "g", "v"]))
        assert rr2.sql("SELECT count(*) FROM planner_point").fetchall() == [(200,)]  # flushed
        fetch = distributed.cluster_fetch(rr2._cluster)
        asked: list[tuple[str, list[int] | None]] = []

        def recording(sql: str, shards: list[int] | None) -> Any:
            asked.append((sql, shards))
            return fetch(sql, shards)

        recording.workers = 2  # type: ignore[attr-defined]
        for sql, owners in (
            ("SELECT g, sum(v) FROM planner_point WHERE k = 3 GROUP BY g", 1),
            ("SELECT count(*), sum(v) FROM planner_point WHERE k IN (1, 2, 3, 4, 5, 6)", 2),
        ):
            found = distributed.cached_plan(sql, rr2._catalog)
            assert found is not None and found.vshards is not None
            asked.clear()
            mine = distributed.execute(found, rr2._catalog, recording)
            assert len(asked) == 1 and asked[0][1] is not None and len(asked[0][1]) == owners
            if owners == 1:
                assert asked[0][0] == sql
            theirs = single.sql(sql).to_arrow()
            assert sorted(mine.to_pylist(), key=str) == sorted(theirs.to_pylist(), key=str)
            assert mine.schema.equals(theirs.schema)
    finally:
        single.close()
