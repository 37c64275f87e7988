"""Differential oracle harness: one native LaminarDB instance against the sharded cluster.

The conformance corpus (`conformance/*.json`, see its README) holds tables and SELECTs that
one `laminardb_native` instance answers deterministically. The cluster must give the same
answer under every partitioning and worker count (DESIGN.md, "How to tell it works"). This
module holds everything the tests need and nothing pytest-specific, so it can also be driven
from a REPL or a script:

* corpus discovery and loading: `corpus_dir`, `corpus_files`, `read_doc`, `load`;
* partitionings: `round_robin`, `first_column_keyed`, `all_columns_keyed`, `each_column_keyed`;
* running a query into a comparable `Outcome` (errors and worker-thread panics included):
  `run_query`;
* the comparator, exactly per the corpus README: `values_equal`, `compare_rows`,
  `compare_outcomes`;
* the runner: `run_file` (list of `Mismatch`) and `check_file` (a `FileReport` with what was
  checked too).

Any object with `execute`, `insert`, `schema`, `sql(...).to_arrow()` works as a connection.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------

Doc = dict[str, Any]
"""One parsed corpus file (`tables`, `queries`, `origin`, ...)."""

PartitionBy = Mapping[str, Sequence[str]]
"""Table name -> partition key columns; a table that is absent is spread round-robin."""

CORPUS_ENV = "LAMINARDB_CONFORMANCE_DIR"

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent.parent


def corpus_dir() -> Path | None:
    """The conformance corpus folder, or None when this checkout has none.

    Looked up in `$LAMINARDB_CONFORMANCE_DIR`, then `<repo>/shared/conformance` and the
    `shared/` folder next to the repository (where the workplace keeps it), so the tests
    run unchanged in a checkout, a worktree and CI.
    """
    candidates: list[Path] = []
    env = os.environ.get(CORPUS_ENV)
    if env:
        candidates.append(Path(env))
    candidates += [_REPO / "shared" / "conformance", _REPO.parent / "shared" / "conformance"]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("datafusion-*.json")):
            return candidate
    return None


def corpus_files(directory: Path | None = None) -> list[Path]:
    """Every corpus JSON file, sorted by name (empty when there is no corpus)."""
    directory = directory if directory is not None else corpus_dir()
    return sorted(directory.glob("datafusion-*.json")) if directory is not None else []


def file_tag(path: Path | str) -> str:
    """Short name of a corpus file for test ids: `datafusion-joins.json` -> `joins`."""
    name = Path(path).name
    return name.removeprefix("datafusion-").removesuffix(".json")


def read_doc(path: Path | str) -> Doc:
    """Parse one corpus file; `_file` is added so reports can name it."""
    with open(path, encoding="utf-8") as handle:
        doc: Doc = json.load(handle)
    doc.setdefault("_file", file_tag(path))
    return doc


# Arrow type of each corpus column type, as the native engine declares it (`conn.schema`).
CORPUS_TYPES: dict[str, pa.DataType] = {
    "INT": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
    "DATE": pa.date32(),
}


def create_source_sql(table: Mapping[str, Any], key: Sequence[str] | None = None) -> str:
    """`CREATE SOURCE name (col TYPE, ...)`, plus our ` PARTITION BY (k, ...)` when keyed."""
    columns = ", ".join(f"{c['name']} {c['type']}" for c in table["columns"])
    sql = f"CREATE SOURCE {table['name']} ({columns})"
    if key:
        sql += f" PARTITION BY ({', '.join(key)})"
    return sql


def column_array(column: Mapping[str, Any], values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """One column of corpus values as an Arrow array of `arrow_type` (from `conn.schema`).

    TIMESTAMP values are epoch microseconds and DATE values ISO strings (README encodings);
    the arrays are built from those and cast, so a schema that declares another unit or width
    still receives the same instants.
    """
    encoding = column.get("encoding")
    if encoding == "epoch_micros":
        return pa.array(values, pa.int64()).cast(pa.timestamp("us")).cast(arrow_type)
    if encoding == "iso_date":
        dates = [None if v is None else datetime.date.fromisoformat(v) for v in values]
        return pa.array(dates, pa.date32()).cast(arrow_type)
    return pa.array(values, CORPUS_TYPES[column["type"]]).cast(arrow_type)


def arrow_rows(table: Mapping[str, Any], schema: pa.Schema) -> pa.Table:
    """All rows of a corpus table as one Arrow table with exactly `schema`.

    Raises ValueError when `schema` does not have the corpus columns in order: a connection
    that declares something else has a catalog bug the oracle must not paper over.
    """
    names = [c["name"] for c in table["columns"]]
    if list(schema.names) != names:
        raise ValueError(
            f"schema of {table['name']} has columns {schema.names}, the corpus declares {names}"
        )
    rows = table["rows"]
    arrays = [
        column_array(c, [r[i] for r in rows], schema.field(i).type)
        for i, c in enumerate(table["columns"])
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def schema_problem(table: Mapping[str, Any], schema: pa.Schema) -> str | None:
    """None when `schema` is what native declares for this corpus table, else what differs."""
    declared = [(c["name"], CORPUS_TYPES[c["type"]]) for c in table["columns"]]
    actual = [(f.name, f.type) for f in schema]
    if declared == actual:
        return None
    return f"declared {[f'{n} {t}' for n, t in declared]}, got {[f'{n} {t}' for n, t in actual]}"


class Connection(Protocol):
    """What the harness needs of a connection (native, cluster, or the stand-in)."""

    def execute(self, sql: str) -> Any: ...

    def insert(self, name: str, data: Any) -> Any: ...

    def schema(self, name: str) -> pa.Schema: ...

    def sql(self, query: str) -> Any: ...

    def close(self) -> Any: ...


def load(conn: Connection, doc: Doc, partition_by: PartitionBy | None = None) -> None:
    """Create every table of `doc` on `conn` and insert all its rows in one `insert` call.

    Keyed tables (those in `partition_by`) get ` PARTITION BY (...)`; the others are created
    without it and so are spread round-robin. One insert per table, as the README asks: many
    small inserts into an unconsumed native source can block. Tables without rows (and the
    one table without columns) are created and get no insert.
    """
    keys = partition_by or {}
    for table in doc["tables"]:
        conn.execute(create_source_sql(table, keys.get(table["name"])))
        if table["rows"] and table["columns"]:
            conn.insert(table["name"], arrow_rows(table, conn.schema(table["name"])))


# ---------------------------------------------------------------------------------------------
# Partitionings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partitioning:
    """A partitioning of every table of one corpus file.

    `kind` groups partitionings in the summary (`rr`, `first-key`, `each-key`, `all-key`);
    `name` is unique within a file (`each-key.3`). `queries` limits the run to the queries
    this partitioning says something new about (None: all of them).
    """

    kind: str
    name: str
    keys: dict[str, list[str]]
    queries: frozenset[str] | None = None

    def describe(self) -> str:
        """`t1(a), t2(b, c)`: which table is keyed on what (`round-robin` when none is)."""
        if not self.keys:
            return "round-robin"
        return ", ".join(f"{t}({', '.join(k)})" for t, k in sorted(self.keys.items()))


def round_robin(doc: Doc) -> Partitioning:
    """Every table round-robin (no PARTITION BY at all)."""
    return Partitioning("rr", "rr", {})


def first_column_keyed(doc: Doc) -> Partitioning:
    """Every table keyed on its first column at once (co-partitioned joins where they line up)."""
    keys = {t["name"]: [t["columns"][0]["name"]] for t in doc["tables"] if t["columns"]}
    return Partitioning("first-key", "first-key", keys)


def all_columns_keyed(doc: Doc) -> Partitioning:
    """Every table keyed on all of its columns together (a composite key with NULL parts)."""
    keys = {t["name"]: [c["name"] for c in t["columns"]] for t in doc["tables"] if t["columns"]}
    return Partitioning("all-key", "all-key", keys)


def co_read_tables(doc: Doc) -> dict[str, set[str]]:
    """For each table, the other tables some query reads together with it."""
    graph: dict[str, set[str]] = defaultdict(set)
    for query in doc["queries"]:
        for table in query["tables"]:
            graph[table].update(t for t in query["tables"] if t != table)
    return graph


def each_column_keyed(doc: Doc) -> list[Partitioning]:
    """Partitionings that key every column of every table in turn, packed into few loads.

    The README asks for each table keyed on each of its columns while the other tables a
    query reads stay round-robin. Loading a cluster per (table, column) would cost hundreds
    of cluster starts for `aggregate.json` alone, so (table, column) pairs are packed
    greedily into rounds in which no two keyed tables are ever read by the same query; each
    round is one load. A round only runs the queries that read one of its keyed tables.
    """
    graph = co_read_tables(doc)
    pending = {t["name"]: [c["name"] for c in t["columns"]] for t in doc["tables"]}
    rounds: list[Partitioning] = []
    while any(pending.values()):
        keyed: dict[str, list[str]] = {}
        for table in sorted(pending, key=lambda t: (-len(pending[t]), t)):
            if pending[table] and not graph[table] & keyed.keys():
                keyed[table] = [pending[table].pop(0)]
        queries = frozenset(q["id"] for q in doc["queries"] if any(t in keyed for t in q["tables"]))
        rounds.append(Partitioning("each-key", f"each-key.{len(rounds)}", keyed, queries))
    return [r for r in rounds if r.queries]


# ---------------------------------------------------------------------------------------------
# Running a query
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorInfo:
    """An exception raised by a query: class name, message and error code (if any).

    Only the class name takes part in comparisons: the native engine's classes call
    themselves `laminardb.QueryError` etc. and ours carry the same names, while messages may
    legitimately name a shard.
    """

    kind: str
    message: str
    code: int | None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """Describe `exc`; `code` is read when the exception carries one."""
        code = getattr(exc, "code", None)
        return cls(type(exc).__name__, str(exc), code if isinstance(code, int) else None)

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code is not None else ""
        return f"{self.kind}{code}: {_shorten(self.message, 160)}"


@dataclass(frozen=True)
class Outcome:
    """What one connection answered to one query: rows (by position) or an error.

    `panicked` is True when a native worker thread printed a panic while the query ran: the
    engine then returns 0 rows and no error (README), so such an answer is suspect.
    """

    rows: list[tuple[Any, ...]] | None
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    panicked: bool = False
    seconds: float = 0.0

    @property
    def row_count(self) -> int | None:
        """Number of rows, None for an error."""
        return None if self.rows is None else len(self.rows)


def table_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows of an Arrow table as tuples, by column position (names may repeat)."""
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    if not columns:
        return [()] * table.num_rows
    return list(zip(*columns, strict=True))


@contextmanager
def captured_stderr_fd(enabled: bool = True) -> Iterator[list[str]]:
    """Capture what is written to file descriptor 2 (Rust panics bypass `sys.stderr`).

    Yields a list that receives the captured text when the block ends. The text is also
    written back to the original stderr so nothing is hidden from the person running tests.
    """
    captured: list[str] = []
    if not enabled:
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            data = sink.read()
            if data:
                os.write(2, data)
            captured.append(data.decode("utf-8", "replace"))


def run_query(conn: Connection, sql: str, *, watch_panics: bool = False) -> Outcome:
    """Run `sql` on `conn` and capture its rows or its error as an `Outcome`.

    With `watch_panics`, fd 2 is captured while the query runs and `panicked` set when a
    native thread reports a panic (only meaningful for an in-process native connection).
    """
    start = time.perf_counter()
    with captured_stderr_fd(watch_panics) as stderr:
        try:
            table = conn.sql(sql).to_arrow()
        except Exception as exc:
            error: ErrorInfo | None = ErrorInfo.of(exc)
            table = None
        else:
            error = None
    seconds = time.perf_counter() - start
    panicked = any("panicked" in text for text in stderr)
    if table is None:
        return Outcome(None, error=error, panicked=panicked, seconds=seconds)
    return Outcome(
        rows=table_rows(table),
        types=tuple(str(f.type) for f in table.schema),
        names=tuple(table.schema.names),
        panicked=panicked,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------
# Comparator (corpus README, "How a runner should use it", step 3)
# ---------------------------------------------------------------------------------------------

REL_TOL = 1e-9
ABS_TOL = 1e-12


def floats_equal(a: float, b: float) -> bool:
    """README float rule: rel 1e-9 of the larger magnitude, abs 1e-12; -0.0 == 0.0; NaN == NaN.

    Infinities equal only themselves. NaN never occurs in the corpus inputs but can come out
    of a computation, and then both engines must produce it.
    """
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:  # also -0.0 == 0.0 and inf == inf
        return True
    if math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= max(REL_TOL * max(abs(a), abs(b)), ABS_TOL)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def values_equal(a: Any, b: Any) -> bool:
    """Whether two result values agree: NULL only with NULL, numbers with float tolerance.

    A bool equals only a bool (Python's `True == 1` does not count). A float compared with
    an int or Decimal uses the float rule; ints and Decimals alone compare exactly. Lists
    and structs (dicts, by position) compare element-wise; everything else with `==`.
    """
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        if isinstance(a, float) or isinstance(b, float):
            return floats_equal(float(a), float(b))
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return rows_equal(tuple(a.values()), tuple(b.values()))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return rows_equal(tuple(a), tuple(b))
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return bool(a == b)


def rows_equal(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two rows have the same width and agree value by value."""
    return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))


def sort_key(value: Any) -> tuple[Any, ...]:
    """A total order over result values, used to sort multisets canonically.

    Groups by kind first (NULL < bool < number < NaN < string < bytes < temporal < nested <
    other) so rows with mixed kinds never raise, and maps -0.0 to 0.0.
    """
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if _is_number(value):
        if isinstance(value, float) and math.isnan(value):
            return (3,)
        if isinstance(value, decimal.Decimal):
            return (2, float(value)) if value.is_finite() else (3,)
        return (2, value + 0.0 if isinstance(value, float) else value)
    if isinstance(value, str):
        return (4, value)
    if isinstance(value, bytes):
        return (5, value)
    if isinstance(value, datetime.datetime):
        return (6, value.isoformat())
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta):
        return (6, str(value))
    if isinstance(value, dict):
        return (7, tuple(sort_key(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return (7, tuple(sort_key(v) for v in value))
    return (9, repr(value))


def row_sort_key(row: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
    """Canonical sort key of a row (its values' `sort_key`s in column order)."""
    return tuple(sort_key(v) for v in row)


MATCHING_LIMIT = 250_000
"""Largest (rows only on one side) x (rows only on the other) product that gets the tolerant
bipartite matching; beyond that the sorted two-pointer difference is reported as it is."""


def _match_multisets(
    left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Tolerant multiset difference of two sorted row lists: (only in left, only in right).

    A two-pointer walk over both sorted lists pairs up equal rows. Rows left over can still
    be tolerance-equal to each other when floats within 1e-9 sorted in a different order on
    the two sides (say (1.0000000001, 'b') vs (1.0, 'a')), so the leftovers are then matched
    with augmenting paths (a maximum bipartite matching, no greedy mistakes).
    """
    only_left: list[tuple[Any, ...]] = []
    only_right: list[tuple[Any, ...]] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if rows_equal(left[i], right[j]):
            i, j = i + 1, j + 1
        elif row_sort_key(left[i]) < row_sort_key(right[j]):
            only_left.append(left[i])
            i += 1
        else:
            only_right.append(right[j])
            j += 1
    only_left += left[i:]
    only_right += right[j:]
    if not only_left or not only_right or len(only_left) * len(only_right) > MATCHING_LIMIT:
        return only_left, only_right
    candidates = [[j for j, r in enumerate(only_right) if rows_equal(row, r)] for row in only_left]
    match_of_right: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in candidates[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in match_of_right or augment(match_of_right[j], seen):
                match_of_right[j] = i
                return True
        return False

    matched = {i for i in range(len(only_left)) if candidates[i] and augment(i, set())}
    return (
        [r for i, r in enumerate(only_left) if i not in matched],
        [r for j, r in enumerate(only_right) if j not in match_of_right],
    )


def compare_rows(
    expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]], ordered: bool
) -> str | None:
    """None when the rows agree per the README, else a short human-readable diff.

    `ordered`: the row sequences must agree position by position. Otherwise both sides are
    compared as multisets: sorted with one canonical key and compared row by row, with a
    tolerant matching as the fallback when floats within tolerance sort differently.
    """
    width_e = {len(r) for r in expected}
    width_a = {len(r) for r in actual}
    if width_e and width_a and width_e != width_a:
        return f"column count {sorted(width_e)} vs {sorted(width_a)}"
    if ordered:
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if not rows_equal(e, a):
                return (
                    f"rows {len(expected)} vs {len(actual)}; first difference at row {index}: "
                    f"single={_fmt_row(e)} cluster={_fmt_row(a)}"
                )
        if len(expected) != len(actual):
            index = min(len(expected), len(actual))
            extra = expected[index:] or actual[index:]
            side = "single" if len(expected) > len(actual) else "cluster"
            return (
                f"rows {len(expected)} vs {len(actual)}; {side} has {len(extra)} more, "
                f"from row {index}: {_fmt_rows(extra)}"
            )
        return None
    left = sorted(expected, key=row_sort_key)
    right = sorted(actual, key=row_sort_key)
    if len(left) == len(right) and all(rows_equal(e, a) for e, a in zip(left, right, strict=True)):
        return None
    only_single, only_cluster = _match_multisets(left, right)
    if not only_single and not only_cluster:
        return None
    parts = [f"rows {len(expected)} vs {len(actual)} (multiset)"]
    if only_single:
        parts.append(f"only in single ({len(only_single)}): {_fmt_rows(only_single)}")
    if only_cluster:
        parts.append(f"only in cluster ({len(only_cluster)}): {_fmt_rows(only_cluster)}")
    return "; ".join(parts)


def compare_outcomes(
    expected: Outcome, actual: Outcome, ordered: bool, *, check_types: bool = True
) -> tuple[str, str] | None:
    """Compare a single-instance outcome with a cluster outcome.

    Returns None on agreement, else (kind, diff). Kinds: `error` (one side raised, or both
    raised different classes; same class counts as agreement whatever the message), `shape`
    (column count), `rows` (values), `types` (Arrow column types differ by position; only
    with `check_types`: the cluster promises the native API, result types included).
    """
    if expected.error is not None or actual.error is not None:
        if expected.error is not None and actual.error is not None:
            if expected.error.kind == actual.error.kind:
                return None
            return "error", f"single raised {expected.error}; cluster raised {actual.error}"
        if expected.error is not None:
            return (
                "error",
                f"single raised {expected.error}; cluster returned {actual.row_count} rows",
            )
        assert actual.error is not None
        return "error", f"cluster raised {actual.error}; single returned {expected.row_count} rows"
    assert expected.rows is not None and actual.rows is not None
    if len(expected.types) != len(actual.types):
        return "shape", (
            f"columns {len(expected.types)} vs {len(actual.types)}: "
            f"single={list(expected.names)} cluster={list(actual.names)}"
        )
    diff = compare_rows(expected.rows, actual.rows, ordered)
    if diff is not None:
        return "rows", diff
    if check_types and expected.types != actual.types:
        pairs = [
            f"#{i} {e} vs {a}"
            for i, (e, a) in enumerate(zip(expected.types, actual.types, strict=True))
            if e != a
        ]
        return "types", "column types differ: " + ", ".join(pairs)
    return None


def _fmt_row(row: Sequence[Any]) -> str:
    return _shorten(repr(tuple(row)), 160)


def _fmt_rows(rows: Sequence[Sequence[Any]], limit: int = 3) -> str:
    shown = ", ".join(_fmt_row(r) for r in rows[:limit])
    more = f", ... (+{len(rows) - limit})" if len(rows) > limit else ""
    return f"[{shown}{more}]"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


ORDER_SENSITIVE: dict[str, str] = {
    "group_by:375": "LAST_VALUE(x) without ORDER BY returns the last row inserted; the corpus "
    "check missed it because reversed and shuffled inputs happen to end on an equal x",
    "group_by:308": "two ARRAY_AGG(amount ORDER BY amount ...) with opposite orders: native "
    "gives the second one the first one's order or not depending on how the rows were "
    "batched (GRC: [80, 30] from one insert, [30, 80] from one insert per row; DataFusion "
    "says [30, 80], df_agree=false); found by the slow tier (each-key, 2 workers)",
}
"""Corpus queries whose native answer depends on the order rows were inserted in, or on how
they were batched (found by loading native with permuted rows, see
test_native_oracle_is_stable, or by a cluster mismatch traced to a native batching bug). Any answer is correct
SQL, and a sharded engine cannot know the insertion order, so their mismatches are reported
apart and do not fail a test."""


@dataclass(frozen=True)
class Mismatch:
    """One query on which the cluster disagreed with the single instance.

    `df_agree` is copied from the corpus: False marks a known divergence of the single engine
    from DataFusion, where the single side may be the wrong one (report those apart).
    `single_panicked`: a native thread panicked while the single instance ran the query.
    `order_sensitive`: the single answer itself depends on insertion order (not a failure).
    """

    file: str
    query_id: str
    sql: str
    kind: str
    diff: str
    partitioning: str = ""
    workers: int | None = None
    df_agree: bool | None = True
    single_panicked: bool = False

    @property
    def order_sensitive(self) -> bool:
        """Whether the single answer depends on insertion order (see ORDER_SENSITIVE)."""
        return self.query_id in ORDER_SENSITIVE

    def __str__(self) -> str:
        flags = "".join(
            [
                " [df_agree=false]" if self.df_agree is False else "",
                " [single panicked]" if self.single_panicked else "",
                " [order-sensitive on native]" if self.order_sensitive else "",
            ]
        )
        where = f" {self.partitioning} w={self.workers}" if self.partitioning else ""
        return (
            f"{self.query_id}{where} ({self.kind}){flags}: {self.diff}\n"
            f"    sql: {_shorten(self.sql, 240)}"
        )


@dataclass
class FileReport:
    """Everything `check_file` found for one corpus file under one cluster configuration.

    `checked` lists every query id compared; `drift` notes single-instance answers whose row
    count differs from the corpus' `single_rows` (a loading problem, or a panic);
    `single_panics` the queries during which the native instance printed a panic.
    """

    file: str
    partitioning: str = ""
    workers: int | None = None
    checked: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    single_panics: list[str] = field(default_factory=list)
    single_seconds: float = 0.0
    cluster_seconds: float = 0.0
    load_seconds: float = 0.0

    @property
    def passed(self) -> list[str]:
        """Ids of checked queries with no mismatch."""
        bad = {m.query_id for m in self.mismatches}
        return [q for q in self.checked if q not in bad]


def selected_queries(doc: Doc, queries: Iterable[str] | None) -> list[dict[str, Any]]:
    """The query records of `doc` whose ids are in `queries` (all when None), in file order."""
    if queries is None:
        return list(doc["queries"])
    wanted = set(queries)
    return [q for q in doc["queries"] if q["id"] in wanted]


def single_outcomes(
    single: Connection, doc: Doc, *, queries: Iterable[str] | None = None, loaded: bool = False
) -> dict[str, Outcome]:
    """Load `doc` into the single instance (unless `loaded`) and run every query, by id.

    Panics are watched (fd 2) because the single side is an in-process native engine.
    """
    if not loaded:
        load(single, doc)
    return {
        q["id"]: run_query(single, q["sql"], watch_panics=True)
        for q in selected_queries(doc, queries)
    }


def check_file(
    single: Connection | None,
    cluster: Connection,
    doc: Doc,
    partition_by: PartitionBy | None = None,
    *,
    queries: Iterable[str] | None = None,
    expected: Mapping[str, Outcome] | None = None,
    check_types: bool = True,
    partitioning: str = "",
    workers: int | None = None,
    repeat: int = 1,
) -> FileReport:
    """Load `doc` on both sides, run the (selected) queries on both and compare.

    `repeat`: how many times the cluster runs each query, every answer compared. A later run
    can take another path than the first: what the workers learnt from their engines'
    first answer (`workers/mirror/`), a plan's learnt gather (`plan/ranks.py`).

    `expected`: the single instance's outcomes computed earlier (`single_outcomes`); then
    `single` is not touched and may be None. This is how the tests reuse one native run per
    file across all cluster configurations. `partition_by` only applies to the cluster.
    The cluster's schema of every table is checked against the corpus declaration (what the
    native engine declares; a mismatch with id `schema:<table>`).
    """
    report = FileReport(doc.get("_file", "?"), partitioning, workers)
    chosen = selected_queries(doc, queries)
    if expected is None:
        if single is None:
            raise ValueError("check_file needs a single connection or expected outcomes")
        expected = single_outcomes(single, doc, queries=[q["id"] for q in chosen])
    start = time.perf_counter()
    load(cluster, doc, partition_by)
    report.load_seconds = time.perf_counter() - start
    for table in doc["tables"]:
        problem = schema_problem(table, cluster.schema(table["name"]))
        if problem is not None:
            report.mismatches.append(
                Mismatch(
                    report.file,
                    f"schema:{table['name']}",
                    create_source_sql(table),
                    "schema",
                    problem,
                    partitioning,
                    workers,
                )
            )
    for query in chosen:
        mine = expected[query["id"]]
        report.single_seconds += mine.seconds
        if mine.panicked:
            report.single_panics.append(query["id"])
        if mine.row_count is not None and mine.row_count != query.get(
            "single_rows", mine.row_count
        ):
            report.drift.append(
                f"{query['id']}: {mine.row_count} rows, corpus says {query['single_rows']}"
            )
        found = None
        for _ in range(repeat):
            theirs = run_query(cluster, query["sql"])
            report.cluster_seconds += theirs.seconds
            found = found or compare_outcomes(
                mine, theirs, bool(query.get("ordered")), check_types=check_types
            )
        report.checked.append(query["id"])
        if found is not None:
            report.mismatches.append(
                Mismatch(
                    report.file,
                    query["id"],
                    query["sql"],
                    found[0],
                    found[1],
                    partitioning,
                    workers,
                    query.get("df_agree"),
                    mine.panicked,
                )
            )
    return report


def run_file(
    single: Connection | None,
    cluster: Connection,
    doc: Doc,
    partition_by: PartitionBy | None = None,
    **options: Any,
) -> list[Mismatch]:
    """Load both sides, run every query on both, return the mismatches (see `check_file`)."""
    return check_file(single, cluster, doc, partition_by, **options).mismatches


# ---------------------------------------------------------------------------------------------
# Session bookkeeping (used by conftest.py; plain classes so they are importable anywhere)
# ---------------------------------------------------------------------------------------------

MAX_LISTED = 300
"""Mismatches listed in the JSON summary per group (the counts are always complete)."""


@dataclass
class Summary:
    """Pass counts per (partitioning kind, workers), mismatches, and oddities of the oracle.

    A query counts as passed for a (kind, workers) when every check of it there passed (the
    `each-key` kind checks a query once per key column of the tables it reads). Failures on
    `df_agree: false` queries (the single engine may be the wrong one) and on ORDER_SENSITIVE
    queries (no single right answer) are counted and listed apart.
    """

    engine: str = "?"
    started: float = field(default_factory=time.time)
    results: dict[str, dict[str, bool]] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    known_divergent: set[str] = field(default_factory=set)
    mismatches: list[Mismatch] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    drift: set[str] = field(default_factory=set)
    single_panics: set[str] = field(default_factory=set)
    native_unstable: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    slow_deselected: int = 0

    def add(self, kind: str, workers: int, report: FileReport, df_disagree: set[str]) -> None:
        """Record one `check_file` report of partitioning `kind` with `workers` workers."""
        key = f"{kind}/w{workers}"
        passed = self.results.setdefault(key, {})
        bad = {m.query_id for m in report.mismatches}
        for qid in report.checked:
            passed[qid] = passed.get(qid, True) and qid not in bad
        self.checks[key] = self.checks.get(key, 0) + len(report.checked)
        self.known_divergent |= df_disagree
        self.drift.update(report.drift)
        self.single_panics.update(report.single_panics)
        spent = report.cluster_seconds + report.load_seconds
        self.seconds[key] = self.seconds.get(key, 0.0) + spent
        self.mismatches += report.mismatches

    def add_failure(self, kind: str, workers: int, label: str, query_ids: list[str]) -> None:
        """Record a configuration that could not even be loaded: all its queries failed."""
        key = f"{kind}/w{workers}"
        passed = self.results.setdefault(key, {})
        for qid in query_ids:
            passed[qid] = False
        self.failed_loads.append(label)

    def as_json(self) -> dict[str, Any]:
        """The summary as plain JSON data."""
        by_config: dict[str, dict[str, Any]] = {}
        for key in sorted(self.results):
            passed = self.results[key]
            failed = [q for q, ok in passed.items() if not ok]
            by_config[key] = {
                "queries": len(passed),
                "passed": len(passed) - len(failed),
                "failed": len(failed),
                "failed_df_agree_false": sum(q in self.known_divergent for q in failed),
                "failed_order_sensitive": sum(q in ORDER_SENSITIVE for q in failed),
                "checks": self.checks.get(key, 0),
                "seconds": round(self.seconds.get(key, 0.0), 2),
            }
        groups: dict[str, list[dict[str, Any]]] = {
            "mismatches": [],
            "mismatches_df_agree_false": [],
            "mismatches_order_sensitive": [],
        }
        kinds: dict[str, int] = {}
        for m in self.mismatches:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
            if m.order_sensitive:
                group = groups["mismatches_order_sensitive"]
            elif m.df_agree is False:
                group = groups["mismatches_df_agree_false"]
            else:
                group = groups["mismatches"]
            if len(group) < MAX_LISTED:
                group.append(
                    {
                        "file": m.file,
                        "id": m.query_id,
                        "partitioning": m.partitioning,
                        "workers": m.workers,
                        "kind": m.kind,
                        "df_agree": m.df_agree,
                        "single_panicked": m.single_panicked,
                        "diff": m.diff,
                        "sql": m.sql,
                    }
                )
        return {
            "engine": self.engine,
            "wall_seconds": round(time.time() - self.started, 1),
            "by_config": by_config,
            "mismatch_count": len(self.mismatches),
            "mismatches_by_kind": kinds,
            **groups,
            "failed_loads": self.failed_loads,
            "single_rows_drift": sorted(self.drift),
            "single_panics": sorted(self.single_panics),
            "native_unstable": self.native_unstable,
            "order_sensitive": ORDER_SENSITIVE,
        }


class Reference:
    """The single native instance's outcomes per corpus file, computed once per session.

    Each file gets a fresh native instance, loaded as the README says, every query run once
    with panics watched; the instance is closed right after (the outcomes are all we need).
    """

    def __init__(self) -> None:
        self._outcomes: dict[Path, dict[str, Outcome]] = {}

    def __call__(self, path: Path) -> dict[str, Outcome]:
        """Outcomes of every query of corpus file `path`, by query id."""
        if path not in self._outcomes:
            conn = open_single()
            try:
                self._outcomes[path] = single_outcomes(conn, read_doc(path))
            finally:
                conn.close()
        return self._outcomes[path]


SCOPE_ENV = "LAMINARDB_DIFF_CLUSTER_SCOPE"


class ClusterPool:
    """Hands out clusters, reusing one per (partitioning name, workers) across corpus files.

    Starting and closing a cluster costs 2-3 s on two cores, and the corpus has 40 files:
    a fresh cluster per (file, partitioning, workers) would spend most of the default tier
    starting processes. Table names are unique across the corpus and a partitioning name
    (`rr`, `first-key`, `each-key.3`, ...) creates each table at most once per file, so every
    file can be loaded into the same cluster for one (name, workers). Only the latest
    cluster is kept (tests run configuration by configuration); a cluster that saw an
    exception is discarded so one crash does not fail the files after it.
    `LAMINARDB_DIFF_CLUSTER_SCOPE=file` gives every (file, partitioning, workers) its own.
    """

    def __init__(self, opener: Callable[[int], Connection], *, shared: bool | None = None):
        self._open = opener
        self.shared = os.environ.get(SCOPE_ENV, "shared") != "file" if shared is None else shared
        self._key: tuple[str, int] | None = None
        self._conn: Connection | None = None
        self.started = 0

    @contextmanager
    def cluster(self, name: str, workers: int) -> Iterator[Connection]:
        """A cluster for partitioning `name` with `workers` workers, for one file's run."""
        key = (name, workers)
        if self._conn is None or self._key != key or not self.shared:
            self.close()
            self._conn = self._open(workers)
            self._key = key
            self.started += 1
        try:
            yield self._conn
        except BaseException:
            self.close(quiet=True)
            raise
        if not self.shared:
            self.close()

    def close(self, *, quiet: bool = False) -> None:
        """Close the cluster held (with `quiet`, a failing close is ignored: it already broke)."""
        conn, self._conn, self._key = self._conn, None, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            if not quiet:
                raise


# ---------------------------------------------------------------------------------------------
# A permuting native double of the cluster: the harness's own tests use it, and
# `LAMINARDB_DIFF_STANDIN=1` runs the corpus against it to check the harness.
# ---------------------------------------------------------------------------------------------

_PARTITION_BY = re.compile(r"\s+PARTITION\s+BY\s*\(([^)]*)\)\s*;?\s*$", re.IGNORECASE | re.DOTALL)


class NativeStandIn:
    """One plain native instance behind the cluster's API (a test double, see block comment).

    Strips our `PARTITION BY (...)` clause before the engine sees it. To exercise the
    comparator's multiset path the way a cluster would, inserted rows are permuted: a keyed
    table's rows are sorted by key (rows of one shard end up together), a round-robin
    table's rows are reversed.
    """

    def __init__(self, workers: int = 1) -> None:
        import laminardb_native

        self.workers = workers
        self._conn = laminardb_native.open(":memory:")
        self._keys: dict[str, list[str]] = {}

    def execute(self, sql: str) -> Any:
        """Run a statement, remembering and removing a trailing PARTITION BY clause."""
        match = _PARTITION_BY.search(sql)
        if match is not None and sql.lstrip().upper().startswith("CREATE SOURCE"):
            name = sql.split()[2].split("(")[0]
            self._keys[name] = [k.strip() for k in match.group(1).split(",") if k.strip()]
            sql = sql[: match.start()]
        return self._conn.execute(sql)

    def insert(self, name: str, data: pa.Table) -> Any:
        """Insert `data`, permuted as a sharded engine might hand it back."""
        key = self._keys.get(name)
        if key and data.num_rows:
            order = pc.sort_indices(data, sort_keys=[(k, "ascending") for k in key])
            data = data.take(order)
        else:
            data = data.take(pa.array(range(data.num_rows - 1, -1, -1), pa.int64()))
        return self._conn.insert(name, data)

    def schema(self, name: str) -> pa.Schema:
        """The engine's schema of `name`."""
        return self._conn.schema(name)

    def sql(self, query: str) -> Any:
        """Run a query (native result object, with `to_arrow()`)."""
        return self._conn.sql(query)

    def close(self) -> None:
        """Close the native instance."""
        self._conn.close()

    def __enter__(self) -> NativeStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------

STANDIN_ENV = "LAMINARDB_DIFF_STANDIN"


def open_single() -> Connection:
    """A fresh plain native instance: the oracle."""
    import laminardb_native

    conn: Connection = laminardb_native.open(":memory:")
    return conn


def cluster_opener() -> tuple[str, Callable[[int], Connection]]:
    """(engine name, `open(workers)`) for the side under test: the real cluster.

    Unkeyed sources are split across every worker whatever their size (`split_rows=1`):
    the corpus tables are small, and by default small inserts go whole to one worker,
    which would leave the round-robin partitionings with nothing split to check. With
    `LAMINARDB_DIFF_STANDIN=1` the permuting native double runs instead, to check the
    harness itself.
    """
    if os.environ.get(STANDIN_ENV) == "1":
        return f"native-stand-in ({STANDIN_ENV}=1)", NativeStandIn
    import laminardb

    def opener(workers: int) -> Connection:
        conn: Connection = laminardb.open(":memory:", workers=workers, split_rows=1)
        return conn

    return "cluster", opener
