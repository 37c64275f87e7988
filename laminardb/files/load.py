"""`Connection.load` / `COPY t FROM`: the coordinator's side of a parallel file load.

The coordinator only plans: it lists the files, cuts them into one share per worker
(`splits.plan`) and runs one transaction. Phase 1 (`ReadFiles`, all workers at once): each
worker reads and casts its share, stages the rows it owns and writes the rest of a keyed
source to one shared-memory segment per owner. Phase 2 (`StageSegments`): each owner stages
the segments meant for it. Phase 3: `Commit` everywhere, each worker inserting its rows as one
engine batch. Any failure before the commit aborts the transaction on every worker and
removes every segment of it (they are all named after the transaction), so nothing is half
loaded and nothing stays in /dev/shm.

A persistent connection (`open(path)`) reads in the coordinator instead and ships the rows
through the router, whose log records them, so that a load survives a reopen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from laminardb.cluster import ddl
from laminardb.files import splits
from laminardb.files.options import FileOptions, resolve
from laminardb.files.read import read_split
from laminardb.wire import protocol
from laminardb.wire.arena import PREFIX, SHM_DIR

if TYPE_CHECKING:
    from laminardb.api.connection import Connection

log = logging.getLogger("laminardb.files")


def load(conn: Connection, table: str, path: str, fmt: str | None, options: dict[str, Any]) -> int:
    """Load the files `path` names into source `table`; all rows or none. Caller holds the lock."""
    relation = conn._catalog.get(table)
    if relation is None or relation.kind != "source":
        raise ddl.not_found(table)
    opts = resolve(path, fmt, options)
    paths = splits.expand(path, relation.name)
    router = conn._router
    router.flush(relation.name)  # rows inserted before the load stay before it
    if conn._durable is not None:
        return _load_here(conn, relation.name, relation.schema, paths, opts)
    cluster = conn._cluster
    n = len(cluster.workers)
    shares = splits.plan(paths, opts, n, relation.name)
    target = router.targets.get(relation.name)
    keys = list(target.keys) if target is not None else []
    if target is not None and target.home is not None:  # a table lives on one worker
        shares = [
            [s for share in shares for s in share] if i == target.home else [] for i in range(n)
        ]
        keys = []
    txn = cluster.next_txn()
    prefix = f"{PREFIX}{os.getpid()}-load{secrets.token_hex(4)}-"
    schema = relation.schema.serialize().to_pybytes()
    began = time.perf_counter()
    try:
        pending = {}
        for shard, share in enumerate(shares):
            if share:
                rid = cluster.new_rid()
                request = protocol.ReadFiles(
                    rid, txn, relation.name, schema, keys, n, prefix, opts.format,
                    opts.to_wire(), share,
                )  # fmt: skip
                cluster.send(shard, request)
                pending[rid] = shard
        read = cluster.collect(pending)
        began = _phase("read", txn, began)
        for reply in read.values():
            log.debug("load txn %d: worker %d %s", txn, reply.shard, reply.value.get("timings"))
        rows = sum(int(r.value["rows"]) for r in read.values())
        by_dest: dict[int, list[str]] = {}
        for reply in read.values():
            for dest, name in reply.value["segments"]:
                by_dest.setdefault(int(dest), []).append(str(name))
        pending = {}
        for dest, names in by_dest.items():
            rid = cluster.new_rid()
            cluster.send(dest, protocol.StageSegments(rid, txn, relation.name, names))
            pending[rid] = dest
        cluster.collect(pending)
        began = _phase("exchange", txn, began)
        committed = cluster.broadcast(lambda rid: protocol.Commit(rid, txn))
        _phase("commit", txn, began)
    except BaseException:
        router._abort(txn, list(range(n)))
        _remove_segments(f"{prefix}x{txn}-")
        raise
    for reply in committed:
        router.rows_sent[reply.shard] += int(reply.value or 0)
    return rows


def _load_here(
    conn: Connection, name: str, schema: pa.Schema, paths: list[str], opts: FileOptions
) -> int:
    """Read in the coordinator and ship through the router (which logs what it ships)."""
    (share,) = splits.plan(paths, opts, 1, name)
    tables = [t for t in (read_split(s, opts, schema, name) for s in share) if t.num_rows]
    if not tables:
        return 0
    return conn._router.ship(name, pa.concat_tables(tables))


def _phase(name: str, txn: int, began: float) -> float:
    """Log how long a phase of load `txn` took (logger laminardb.files, level DEBUG)."""
    now = time.perf_counter()
    log.debug("load txn %d: %s took %.3f s", txn, name, now - began)
    return now


def _remove_segments(start: str) -> None:
    """Unlink every segment of one load (a worker may have failed before listing them)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(start):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, entry))
