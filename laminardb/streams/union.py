"""Decides from a stream's SQL whether the union of its per-worker outputs is its output.

Each worker runs every stream over its own shard. Concatenating the workers' results gives
what one engine fed every row would emit exactly when no result row depends on rows held by
two workers: a projection or filter (each row stands alone), or an aggregate whose groups
never span workers, i.e. one grouped by every partition-key column of the one source it reads
(all rows of a key live on one worker, DESIGN.md decision 3), or one over a table (kept
whole on one worker). Anything else (a global aggregate, GROUP BY a non-key column, DISTINCT
without the key, LIMIT, window functions, joins, subqueries) would give per-shard partial
results; `why_not_union` names the reason so that the caller can refuse the stream clearly.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from laminardb.cluster.catalog import Catalog, Relation
from laminardb.plan.statements import SQLGLOT_DIALECT

# DataFusion aggregates that sqlglot may parse as plain (anonymous) functions.
_AGGREGATE_NAMES = {
    "approx_distinct",
    "approx_median",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
    "array_agg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "corr",
    "covar",
    "covar_pop",
    "covar_samp",
    "first_value",
    "grouping",
    "last_value",
    "median",
    "nth_value",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "var",
    "var_pop",
    "var_samp",
}


def why_not_union(sql: str, catalog: Catalog) -> str | None:
    """None when the union of the per-worker outputs of the stream `sql` is its output,
    else the reason it is not (a phrase that completes "because ...")."""
    try:
        tree = sqlglot.parse_one(sql, read=SQLGLOT_DIALECT)
    except sqlglot.errors.SqlglotError:
        return "its SQL could not be analysed to prove that per-worker results add up"
    if not isinstance(tree, exp.Select):
        return "it is not a single SELECT (set operations need cross-worker merging)"
    if sum(1 for _ in tree.find_all(exp.Select)) > 1:
        return "it has subqueries (only a single SELECT over one source is merged by union)"
    if tree.args.get("joins"):
        return "it joins relations (joins across shards are not merged yet)"
    tables = list(tree.find_all(exp.Table))
    if len(tables) != 1:
        return "it does not read exactly one source"
    relation = catalog.get(tables[0].name)
    if relation is None:
        return (
            f"it reads '{tables[0].name}', which is not a source (streams over streams are "
            "not merged yet)"
        )
    if relation.home is not None:
        return None  # a table lives whole on its home worker: the others emit nothing
    if tree.args.get("limit") or tree.args.get("offset"):
        return "LIMIT/OFFSET would apply to each worker's rows separately"
    if tree.find(exp.Window):
        return "window functions (OVER) would see only one worker's rows"
    if not _aggregates(tree):
        return None
    return _keyed_groups(tree, relation)


def _aggregates(tree: exp.Select) -> bool:
    if tree.args.get("group") or tree.args.get("having") or tree.args.get("distinct"):
        return True
    if tree.find(exp.AggFunc):
        return True
    return any(
        isinstance(f, exp.Anonymous) and str(f.this).lower() in _AGGREGATE_NAMES
        for f in tree.find_all(exp.Anonymous)
    )


def _keyed_groups(tree: exp.Select, relation: Relation) -> str | None:
    keys = relation.partition_by
    if not keys:
        return (
            f"it aggregates source '{relation.name}', which has no PARTITION BY key, so the "
            "rows of one group are spread over every worker (cross-worker merging of "
            "partial aggregates is not available yet)"
        )
    grouped = _grouped_columns(tree, relation)
    missing = [k for k in keys if k.lower() not in grouped]
    if not missing:
        return None
    what = "its GROUP BY" if tree.args.get("group") else "it aggregates without GROUP BY and"
    return (
        f"{what} lacks the partition key column(s) {', '.join(missing)} of source "
        f"'{relation.name}', so the rows of one group are spread over several workers "
        "(cross-worker merging of partial aggregates is not available yet)"
    )


def _grouped_columns(tree: exp.Select, relation: Relation) -> set[str]:
    """Lower-cased source columns that the rows are grouped by as plain column references."""
    selects = tree.expressions
    source_columns = {name.lower() for name in relation.schema.names}
    aliases = {s.alias.lower(): s.this for s in selects if isinstance(s, exp.Alias) and s.alias}
    group = tree.args.get("group")
    if group is not None:
        items = list(group.expressions)
    elif tree.args.get("distinct"):
        items = list(selects)
    else:
        items = []
    out: set[str] = set()
    for item in items:
        if isinstance(item, exp.Literal) and not item.is_string:  # GROUP BY 1
            position = int(item.this) - 1
            item = selects[position] if 0 <= position < len(selects) else item
        if isinstance(item, exp.Alias):
            item = item.this
        if isinstance(item, exp.Column):
            name = item.name.lower()
            if name not in source_columns and name in aliases:  # GROUP BY an output alias
                target = aliases[name]
                name = target.name.lower() if isinstance(target, exp.Column) else ""
            if name in source_columns:
                out.add(name)
    return out
