"""Applies a statement to every worker so that it succeeds everywhere or nowhere.

Worker catalogs are identical, so a statement runs on worker 0 first: if it fails there it
fails with the engine's own error and nothing else is touched (a statement that was logged is
taken back out of the log). If it then fails on another worker, that can only be an outage:

* with a log (a path, or `recovery=True`), the statement was logged before it ran, so it is
  kept as applied: a worker that died is restarted and replays it from the log, the live
  ones applied it already, and a silent (stopped) one applies it from its queue when it
  resumes. Every kind of statement (DROP and ALTER included) thus ends up applied on every
  worker, and the catalogs agree;
* without a log, what the statement created is undone where it succeeded (best effort: a
  DROP or ALTER cannot be undone, and a dead worker's rows are lost anyway).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pyarrow as pa

from laminardb.api.errors import ConnectionError, LaminarError, SchemaError, codes
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
    _check_drop_kind(catalog, stmt)
    existed = stmt.name is not None and stmt.name in catalog
    make = _execute(stmt)
    first = run_first(cluster, make(cluster.new_rid()))
    others = list(range(1, len(cluster.workers)))
    if others:
        try:
            cluster.broadcast(make, others)
        except LaminarError as exc:
            recovery = getattr(router, "recovery", None)
            if recovery is None or not recovery.keeps(stmt.sql):
                _undo(cluster, stmt, existed)
                raise
            _finish(cluster, catalog, router, stmt, existed, recovery, exc)
    _update_catalog(cluster, catalog, router, stmt, existed)
    return first


def run_first(cluster: Cluster, request: Any) -> Response:
    """Send a statement to worker 0, which runs every statement first. When that fails
    with a ConnectionError, no worker has applied it (`applied_nowhere`): a caller with a
    log may restart worker 0 and send it again."""
    try:
        return cluster.request(0, request)
    except ConnectionError as exc:
        exc.applied_nowhere = True  # type: ignore[attr-defined]
        raise


def applied_nowhere(exc: ConnectionError) -> bool:
    """Whether `exc` came from `run_first`: the statement reached no engine."""
    return bool(getattr(exc, "applied_nowhere", False))


def _check_drop_kind(catalog: Catalog, stmt: Statement) -> None:
    """`DROP TABLE` of a source (or `DROP SOURCE` of a table) is refused: the engine would
    take the name out of its query catalog but keep the source, a state of its own (queries
    fail, inserts still land, the name cannot be created again)."""
    if stmt.kind is not StatementKind.DROP or stmt.name is None:
        return
    if stmt.drop_kind not in (ObjectKind.SOURCE, ObjectKind.TABLE):
        return
    relation = catalog.get(stmt.name)
    wanted = stmt.drop_kind.value.lower()
    if relation is not None and relation.kind != wanted:
        raise SchemaError(
            f"Table not found ({codes.TABLE_NOT_FOUND}): '{relation.name}' is a "
            f"{relation.kind}, not a {wanted}: DROP {relation.kind.upper()} {relation.name} "
            "drops it",
            code=codes.TABLE_NOT_FOUND,
        )


def _finish(
    cluster: Cluster,
    catalog: Catalog,
    router: Router,
    stmt: Statement,
    existed: bool,
    recovery: Any,
    exc: LaminarError,
) -> None:
    """Worker 0 applied a logged statement and another worker failed it: keep it as applied.

    A dead worker is restarted and replays the statement from the log (the call goes on);
    a silent one applies it when it resumes, and the call fails saying so."""
    shard = exc.shard if isinstance(exc, ConnectionError) else None
    recovery.keep_statement()  # worker 0 applied it: the log says so, whatever happens next
    if cluster.dead(shard):
        log.warning("a worker died during %r: kept as applied, replayed on restart", stmt.sql)
        recovery.ensure()  # the restarted worker replays the log, this statement included
        return
    if not isinstance(exc, ConnectionError):
        # An engine error on a worker whose catalog equals worker 0's cannot happen; if it
        # does, the log keeps the statement so that a reopen gives worker 0's answer.
        log.error("statement %r failed on a worker after worker 0 applied it: %s", stmt.sql, exc)
    _update_catalog(cluster, catalog, router, stmt, existed)
    raise ConnectionError(
        f"{exc}; the statement {stmt.sql!r} was logged and applied by the other workers: the "
        "silent worker applies it when it resumes (or from the log if it is replaced), so do "
        "not run it again",
        code=getattr(exc, "code", None),
        shard=shard,
    ) from exc


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
