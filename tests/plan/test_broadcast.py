"""Golden tests of the broadcast rule (`broadcast`): input SQL -> candidates and plans.

Pure planning (no cluster): which relations can be the big side, the SQL each worker runs
(small relations under their private names), the merge, the columns shipped, and the
refusals (FULL joins, joins that keep a small relation, sub-queries over the big relation,
aggregates that combine rows across workers without a two-phase plan, sizes over the
threshold). That the plans give the single instance's answers is checked by
`tests/differential/test_planner_broadcast.py`.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan import broadcast
from laminardb.plan.broadcast import BroadcastPlan

pytestmark = pytest.mark.timeout(60)

FACT = pa.schema([("id", pa.int64()), ("g", pa.int64()), ("v", pa.float64())])
DIM = pa.schema([("g", pa.int64()), ("name", pa.string()), ("w", pa.int64())])
P = "__ldb_partials"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """`f` keyed on id, `r` round-robin (both fact-shaped), `d`, `e` dimensions (round-robin
    and keyed on g), `t` a dimension table on worker 1."""
    found = Catalog()
    found.add(Relation("f", "source", FACT, "", partition_by=("id",)))
    found.add(Relation("r", "source", FACT, ""))
    found.add(Relation("d", "source", DIM, ""))
    found.add(Relation("e", "source", DIM, "", partition_by=("g",)))
    found.add(Relation("t", "table", DIM, "", home=1))
    return found


def only(catalog: Catalog, sql: str, big: str) -> BroadcastPlan:
    """The candidate plan of `sql` with `big` as the big relation."""
    found = {p.big: p for p in broadcast.candidates(sql, catalog)}
    assert big in found, f"{sql}: candidates {sorted(found)}"
    return found[big]


GOLDEN = [
    # (sql, big, worker SQL, merge, shipped columns of the first small relation)
    (
        "SELECT f.id, d.name FROM f JOIN d ON f.g = d.g",
        "f",
        'SELECT f.id, d.name FROM f JOIN __bc_0 AS "d" ON f.g = d.g',
        None,
        ("g", "name"),
    ),
    (
        "SELECT x.id, y.name FROM r AS x LEFT JOIN d y ON x.g = y.g WHERE y.w > 1",
        "r",
        "SELECT x.id, y.name FROM r AS x LEFT JOIN __bc_0 y ON x.g = y.g WHERE y.w > 1",
        None,
        ("g", "name", "w"),
    ),
    (
        "SELECT f.id, d.name FROM d RIGHT JOIN f ON f.g = d.g ORDER BY f.id DESC LIMIT 3",
        "f",
        'SELECT f.id, d.name FROM __bc_0 AS "d" RIGHT JOIN f ON f.g = d.g '
        "ORDER BY f.id DESC LIMIT 3",
        f'SELECT * FROM {P} ORDER BY ("_p0") DESC NULLS FIRST LIMIT 3',
        ("g", "name"),
    ),
    (
        "SELECT id FROM f WHERE g IN (SELECT g FROM d WHERE w > 2) AND v NOT IN (SELECT w FROM d)",
        "f",
        'SELECT id FROM f WHERE g IN (SELECT g FROM __bc_0 AS "d" WHERE w > 2) AND v NOT IN '
        '(SELECT w FROM __bc_0 AS "d")',
        None,
        ("g", "w"),
    ),
    (
        "SELECT DISTINCT d.name FROM f JOIN d ON f.g = d.g ORDER BY 1 LIMIT 10",
        "f",
        'SELECT DISTINCT d.name FROM f JOIN __bc_0 AS "d" ON f.g = d.g ORDER BY 1 LIMIT 10',
        f'SELECT DISTINCT * FROM {P} ORDER BY ("_p0") ASC NULLS LAST LIMIT 10',
        ("g", "name"),
    ),
    (
        # grouped by the big relation's whole key: groups never span workers
        "SELECT f.id, count(*) FROM f JOIN d ON f.g = d.g GROUP BY f.id",
        "f",
        'SELECT f.id, count(*) FROM f JOIN __bc_0 AS "d" ON f.g = d.g GROUP BY f.id',
        None,
        ("g",),
    ),
    (
        # two small relations, one a table on one worker; `*` ships every column
        "SELECT * FROM r JOIN d ON r.g = d.g LEFT JOIN t ON t.g = r.g",
        "r",
        'SELECT * FROM r JOIN __bc_0 AS "d" ON r.g = d.g LEFT JOIN __bc_1 AS "t" ON t.g = r.g',
        None,
        ("g", "name", "w"),
    ),
    (
        "SELECT f.id FROM f WHERE EXISTS (SELECT 1 FROM d WHERE d.g = f.g)",
        "f",
        'SELECT f.id FROM f WHERE EXISTS (SELECT 1 FROM __bc_0 AS "d" WHERE d.g = f.g)',
        None,
        ("g",),
    ),
]


@pytest.mark.parametrize(("sql", "big", "worker", "merge", "columns"), GOLDEN)
def test_golden_plans(
    catalog: Catalog, sql: str, big: str, worker: str, merge: str | None, columns: tuple[str, ...]
) -> None:
    plan = only(catalog, sql, big)
    assert plan.worker_sql == worker
    assert plan.merge_sql == merge
    assert plan.small[0].columns == columns
    assert plan.small[0].private == "__bc_0"
    assert plan.aggregate is None
    # the probe SQL is the same query over the catalog names
    assert "__bc_" not in plan.probe_sql


def test_the_ddl_declares_the_shipped_columns(catalog: Catalog) -> None:
    plan = only(catalog, "SELECT f.id, d.name FROM f JOIN d ON f.g = d.g", "f")
    assert plan.small[0].ddl == 'CREATE SOURCE __bc_0 ("g" BIGINT, "name" VARCHAR)'


def test_inner_join_offers_both_sides(catalog: Catalog) -> None:
    found = broadcast.candidates("SELECT * FROM f JOIN d ON f.g = d.g", catalog)
    assert sorted(p.big for p in found) == ["d", "f"]


def test_aggregate_over_the_join_is_two_phase(catalog: Catalog) -> None:
    sql = "SELECT d.name, count(*), sum(v) FROM r JOIN d ON r.g = d.g GROUP BY d.name"
    plan = only(catalog, sql, "r")
    assert plan.aggregate is not None
    assert plan.aggregate.inner_sql == (
        'SELECT d.name AS "_j0", v AS "_j1" FROM r JOIN d ON r.g = d.g'
    )
    assert plan.aggregate.outer_sql == (
        'SELECT "_j0", count(*), sum("_j1") FROM __ldb_join GROUP BY "_j0"'
    )


REFUSED = [
    # (sql, the relation that must not be the big side)
    ("SELECT * FROM f FULL JOIN d ON f.g = d.g", "f"),
    ("SELECT * FROM f RIGHT JOIN d ON f.g = d.g", "f"),  # keeps every row of d
    ("SELECT * FROM d LEFT JOIN f ON f.g = d.g", "f"),  # keeps every row of d
    ("SELECT * FROM f WHERE v > (SELECT avg(v) FROM f)", "f"),  # f in a sub-query
    ("SELECT * FROM f JOIN f AS f2 ON f.id = f2.g", "f"),  # named twice
    ("SELECT d.name, row_number() OVER (ORDER BY f.v) FROM f JOIN d ON f.g = d.g", "f"),
    ("SELECT DISTINCT d.name, count(*) FROM f JOIN d ON f.g = d.g GROUP BY d.name", "f"),
    ("SELECT count(*) FROM f JOIN d ON f.g = d.g WHERE f.g IN (SELECT g FROM d)", "f"),
    ("SELECT * FROM f JOIN d ON f.g = d.g UNION ALL SELECT * FROM f JOIN d ON f.g = d.g", "f"),
    ("WITH x AS (SELECT * FROM d) SELECT * FROM f JOIN x ON f.g = x.g", "f"),
]


@pytest.mark.parametrize(("sql", "big"), REFUSED)
def test_refusals(catalog: Catalog, sql: str, big: str) -> None:
    assert big not in {p.big for p in broadcast.candidates(sql, catalog)}, sql


def test_one_relation_is_no_broadcast(catalog: Catalog) -> None:
    assert broadcast.candidates("SELECT * FROM f WHERE g > 1", catalog) == ()


def test_a_big_table_runs_on_its_home_only(catalog: Catalog) -> None:
    plan = only(catalog, "SELECT t.name, d.w FROM t JOIN d ON t.g = d.g", "t")
    assert plan.shards == (1,)


def test_choose_by_row_counts(catalog: Catalog) -> None:
    found = broadcast.candidates("SELECT * FROM f JOIN d ON f.g = d.g", catalog)
    chosen = broadcast.choose(found, {"f": 1_000_000, "d": 1_000})
    assert chosen is not None and chosen.big == "f"
    chosen = broadcast.choose(found, {"f": 10, "d": 5_000})
    assert chosen is not None and chosen.big == "d"
    # the small side over the threshold, or not smaller than the big one: no broadcast
    assert broadcast.choose(found, {"f": 10**7, "d": 200_000}) is None
    assert broadcast.choose(found, {"f": 10**7, "d": 2_000}, limit=1_000) is None
    assert broadcast.choose(found, {"f": 5, "d": 5}) is None
    assert broadcast.choose(found, {"f": 5, "d": 0}, limit=0) is None  # 0: off
    # several small relations count together
    many = broadcast.candidates("SELECT * FROM f JOIN d ON f.g = d.g JOIN e ON e.g = f.g", catalog)
    big_f = [p for p in many if p.big == "f"]
    assert broadcast.choose(tuple(big_f), {"f": 10**6, "d": 600, "e": 600}, limit=1_000) is None
    assert broadcast.choose(tuple(big_f), {"f": 10**6, "d": 400, "e": 400}, limit=1_000)


def test_private_names_keep_aliases_and_quotes() -> None:
    mapping = {"d": "__bc_0"}
    assert broadcast.private_sql('SELECT "d".g FROM "d"', mapping) == (
        'SELECT "d".g FROM __bc_0 AS "d"'
    )
    assert broadcast.private_sql("SELECT x.g FROM d AS x, d", mapping) == (
        'SELECT x.g FROM __bc_0 AS x, __bc_0 AS "d"'
    )


def test_a_relation_named_like_a_private_one_turns_it_off() -> None:
    found = Catalog()
    found.add(Relation("f", "source", FACT, ""))
    found.add(Relation("__bc_x", "source", DIM, ""))
    assert broadcast.candidates("SELECT * FROM f JOIN __bc_x ON f.g = __bc_x.g", found) == ()
