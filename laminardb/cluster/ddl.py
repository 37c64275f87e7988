"""Applies a statement to every worker so that it succeeds everywhere or nowhere.

Worker catalogs are identical, so a statement runs on worker 0 first: if it fails there it
fails with the engine's own error and nothing else is touched; if it then fails on another
worker (which can only be an outage) it is undone where it succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pyarrow as pa

from laminardb.api.errors import LaminarError, SchemaError, codes
from laminardb.cluster.catalog import Catalog, Relation
from laminardb.cluster.supervisor import Cluster, Response
from laminardb.ingest.router import Router
from laminardb.plan.statements import ObjectKind, Statement, StatementKind
from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb.ddl")

_UNDO = {
    StatementKind.CREATE_SOURCE: "SOURCE",
    StatementKind.CREATE_TABLE: "TABLE",
    StatementKind.CREATE_STREAM: "STREAM",
    StatementKind.CREATE_MATERIALIZED_VIEW: "MATERIALIZED VIEW",
    StatementKind.CREATE_SINK: "SINK",
    StatementKind.CREATE_VIEW: "VIEW",
}


def apply(cluster: Cluster, catalog: Catalog, router: Router, stmt: Statement) -> Response:
    """Run a catalog-changing statement on all workers and update the coordinator's catalog."""
    existed = stmt.name is not None and stmt.name in catalog
    make = _execute(stmt)
    first = cluster.request(0, make(cluster.new_rid()))
    others = list(range(1, len(cluster.workers)))
    if others:
        try:
            cluster.broadcast(make, others)
        except LaminarError:
            _undo(cluster, stmt, existed)
            raise
    _update_catalog(cluster, catalog, router, stmt, existed)
    return first


def _execute(stmt: Statement) -> Any:
    kind = stmt.kind.name
    return lambda rid: protocol.Execute(rid, stmt.sql, kind, stmt.raw_name or stmt.name)


def _undo(cluster: Cluster, stmt: Statement, existed: bool) -> None:
    """Best effort: drop what the failed statement created on the workers where it worked."""
    what = _UNDO.get(stmt.kind)
    if what is None or existed or stmt.name is None:
        log.error("statement failed on some workers and cannot be undone: %s", stmt.sql)
        return
    undo = f"DROP {what} IF EXISTS {stmt.raw_name or stmt.name}"
    for worker in cluster.workers:
        if worker.alive:
            with contextlib.suppress(Exception):
                cluster.request(
                    worker.shard, protocol.Execute(cluster.new_rid(), undo, "DROP", stmt.name)
                )


def _update_catalog(
    cluster: Cluster, catalog: Catalog, router: Router, stmt: Statement, existed: bool
) -> None:
    name = stmt.raw_name or stmt.name
    if name is None:
        return
    if stmt.kind in (StatementKind.CREATE_SOURCE, StatementKind.CREATE_TABLE):
        if existed and stmt.if_not_exists and not stmt.or_replace:
            return
        kind = "source" if stmt.kind is StatementKind.CREATE_SOURCE else "table"
        relation = Relation(
            name=name,
            kind=kind,
            schema=fetch_schema(cluster, name),
            create_sql=stmt.sql,
            partition_by=stmt.partition_by,
            watermark_column=_watermark_column(cluster, name),
            home=0 if kind == "table" else None,
        )
        catalog.remove(name)
        catalog.add(relation)
        router.forget(name)
        router.register(name, relation.partition_by, relation.home)
    elif stmt.kind is StatementKind.DROP and stmt.drop_kind in (
        ObjectKind.SOURCE,
        ObjectKind.TABLE,
    ):
        catalog.remove(name)
        router.forget(name)
    elif stmt.kind is StatementKind.ALTER:
        altered = catalog.get(name)
        if altered is not None:
            altered.schema = fetch_schema(cluster, altered.name)
            altered.alters.append(stmt.sql)


def fetch_schema(cluster: Cluster, name: str) -> pa.Schema:
    reply = cluster.request(0, protocol.Call(cluster.new_rid(), "schema", [name]))
    return arrow_ipc.loads(reply.data.buffer).schema


def _watermark_column(cluster: Cluster, name: str) -> str | None:
    reply = cluster.request(0, protocol.Call(cluster.new_rid(), "sources"))
    for source_name, column in reply.value:
        if source_name == name:
            return column  # type: ignore[no-any-return]
    return None


def not_found(name: str) -> SchemaError:
    """The native engine's error for an insert into something that is not a source."""
    return SchemaError(
        f"Table not found (200): Table not found: {name}", code=codes.TABLE_NOT_FOUND
    )
