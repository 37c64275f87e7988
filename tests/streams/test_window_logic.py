"""Pure logic of merged windows: hop panes, DISTINCT from distinct values, HAVING predicates.

No processes: partial tables are built by hand as the workers would send them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import sqlglot

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan.statements import SQLGLOT_DIALECT
from laminardb.streams import merge
from laminardb.streams.combine import Agg, combine, final
from laminardb.streams.having import predicate

SCHEMA = pa.schema([("ts", pa.int64()), ("device", pa.string()), ("value", pa.float64())])
SOURCE = "CREATE SOURCE ev (ts BIGINT, device VARCHAR, value DOUBLE, WATERMARK FOR ts AS ts)"
HOP = "hop(ts, INTERVAL '1' SECOND, INTERVAL '2' SECOND)"


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(Relation("ev", "source", SCHEMA, SOURCE, (), "ts"))
    return cat


def test_hop_windows_from_panes_in_order_with_the_hop_value() -> None:
    sql = (
        f"CREATE STREAM h AS SELECT {HOP} AS w, COUNT(*) AS n, SUM(value) AS total FROM ev "
        f"GROUP BY {HOP} EMIT ON WINDOW CLOSE"
    )
    plan = merge.plan("h", sql, catalog())
    assert isinstance(plan, merge.MergePlan), plan
    out = pa.schema([("w", pa.timestamp("ms")), ("n", pa.int64()), ("total", pa.float64())])
    merger = merge.WindowMerger(plan, out, stall_s=1e9)
    rows = pa.table({"ts": [100, 500, 1500, 2500], "device": ["a"] * 4, "value": [1.0, 2, 4, 8]})
    merger.expect(rows, None, 2000, True)  # closes windows ending by 2000
    partial = pa.table(
        {"__w": [0, 1000, 2000], "__n": [2, 1, 1], "__a0": [2, 1, 1], "__a1": [3.0, 4.0, 8.0]}
    )
    merger.add(partial.slice(0, 2))

    def emitted() -> list[tuple[object, ...]]:
        got = merger.ready()
        assert got is not None
        return [
            (r["window_start"], r["window_end"], r["w"].timestamp() * 1000, r["n"], r["total"])
            for r in got.to_pylist()
        ]

    assert emitted() == [
        (-1000, 1000, -1000, 2, 3.0),  # pane 0 ([0,1000)): hop value -1000
        (0, 2000, -1000, 2, 3.0),
        (0, 2000, 0, 1, 4.0),  # pane 1000: hop value 0
    ]
    merger.expect(rows.slice(0, 0), None, 3000, True)
    assert merger.ready() is None  # window [1000,3000) waits for pane 2000's partial
    merger.add(partial.slice(2))
    assert emitted() == [(1000, 3000, 0, 1, 4.0), (1000, 3000, 1000, 1, 8.0)]
    assert merger.open_windows == 1  # pane 2000 still feeds window [2000,4000)
    assert merger.batches_out == 2 and merger.rows_out == 5 and merger.rows_in == 3


def test_distinct_counts_only_values_of_rows_that_pass_the_where() -> None:
    aggs = (Agg("count", (), distinct=True), Agg("sum", (), distinct=True), Agg("count", ("__a2",)))
    part = pa.table(
        {
            "__g0": ["x", "x", "x", "y"],
            "__d": [1.0, 2.0, 5.0, None],
            "__n": [2, 1, 1, 3],
            "__m": [1, 0, 1, 2],  # value 2.0 came only from rows the WHERE drops
            "__a2": [1, 0, 1, 2],
        }
    )
    other = pa.table({"__g0": ["x"], "__d": [1.0], "__n": [1], "__m": [1], "__a2": [1]})
    merged = combine(aggs, 1, True, [part, other])
    assert merged is not None
    merged = merged.sort_by("__g0")
    assert merged.column("__g0").to_pylist() == ["x", "y"]
    assert final(aggs[0], merged).to_pylist() == [2, 0]  # 1.0 and 5.0; NULL is no value
    assert final(aggs[1], merged).to_pylist() == [6.0, None]
    assert final(aggs[2], merged).to_pylist() == [3, 2]


def test_combine_without_groups_is_one_row_or_none() -> None:
    aggs = (Agg("max", ("__a0",)), Agg("avg", ("__a1s", "__a1c")))
    parts = [
        pa.table({"__n": [2], "__a0": [5], "__a1s": [6.0], "__a1c": [2]}),
        pa.table({"__n": [1], "__a0": [9], "__a1s": [3.0], "__a1c": [1]}),
    ]
    merged = combine(aggs, 0, False, parts)
    assert merged is not None
    assert final(aggs[0], merged).to_pylist() == [9]
    assert final(aggs[1], merged).to_pylist() == [3.0]
    empty = pa.table({"__n": [0], "__a0": [None], "__a1s": [None], "__a1c": [0]})
    assert combine(aggs, 0, False, [empty.cast(parts[0].schema)]) is None


def test_having_predicate_keeps_only_true_rows() -> None:
    tree = sqlglot.parse_one(
        "SELECT 1 FROM t HAVING (__f0 > 2 OR __g0 IS NULL) AND NOT __f1 BETWEEN 1 AND 2",
        read=SQLGLOT_DIALECT,
    )
    table = pa.table({"__g0": ["a", None, "b", "c"], "__f0": [3, 1, None, 5], "__f1": [0, 0, 0, 1]})
    kept = table.filter(predicate(tree.args["having"].this))
    assert kept.column("__g0").to_pylist() == ["a", None]  # NULL > 2 is not true
    assert np.array_equal(kept.column("__f0").to_numpy(zero_copy_only=False)[:1], [3])
