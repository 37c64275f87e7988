"""`Connection.load` / `COPY t FROM`: the coordinator's side of a parallel file load.

The coordinator only plans: it lists the files, cuts them into one share per worker
(`splits.plan`) and runs one transaction. Phase 1 (`ReadFiles`, all workers at once): each
worker reads and casts its share, stages the rows it owns and writes the rest of a keyed
source to one shared-memory segment per owner. Phase 2 (`StageSegments`): each owner stages
the segments meant for it. Phase 3: `Commit` everywhere, each worker inserting its pieces.
The input bytes read so far go to the caller's progress watcher (`progress`). Any failure before the commit aborts the transaction on every worker and
removes every segment of it (they are all named after the transaction), so nothing is half
loaded and nothing stays in /dev/shm.

On a logged connection (`open(path)` or `recovery=True`) the workers still read in parallel,
but every row, a worker's own included, goes to a segment (`segment_all`): after staging, the
coordinator maps the segments and writes them to the log as one batch record, whose placement
says which worker holds which rows, and only then commits, as the router does for an insert.
So a load survives a reopen, and a worker restarted later gets its share back from the log.
A worker that dies before the record is written is restarted and the load runs again; after
it, the restarted worker replays its share from the log and the others have committed theirs.

The exception is a source whose inserts the coordinator's streams must see (a WATERMARK, or
a merged stream reading it): there the coordinator reads the files and inserts the rows as
one call (`_through_insert`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from laminardb.api.errors import ConnectionError, LaminarError
from laminardb.cluster import ddl
from laminardb.cluster.catalog import Relation
from laminardb.cluster.recovery import Placement
from laminardb.cluster.supervisor import Response
from laminardb.files import progress, splits
from laminardb.files.options import FileOptions, resolve
from laminardb.files.read import read_split
from laminardb.ingest.router import Target
from laminardb.wire import protocol
from laminardb.wire.arena import PREFIX, SHM_DIR
from laminardb.wire.protocol import FileSplit

if TYPE_CHECKING:
    from laminardb.api.connection import Connection
    from laminardb.durability.log import Log

log = logging.getLogger("laminardb.files")


def load(conn: Connection, table: str, path: str, fmt: str | None, options: dict[str, Any]) -> int:
    """Load the files `path` names into source `table`; all rows or none. Caller holds the lock."""
    relation = conn._catalog.get(table)
    if relation is None or relation.kind != "source":
        raise ddl.not_found(table)
    # The workers resolve a relative path against their own working directory, the one
    # this process had when it started them: resolve it here, against the current one.
    path = os.path.abspath(path)
    paths = splits.expand(path, relation.name)
    opts = resolve(path, fmt, options, paths)
    router = conn._router
    router.flush(relation.name)  # rows inserted before the load stay before it
    if conn._streams.watches(relation.name, conn._catalog):
        return _through_insert(conn, relation, paths, opts)
    recovery = conn._recovery
    if conn._durable is None or not recovery.logging:
        return _load(conn, relation, paths, opts, None)
    log_ = recovery.log
    assert log_ is not None
    for attempt in range(3):
        logged: list[int] = []
        try:
            return _load(conn, relation, paths, opts, log_, logged)
        except LaminarError as exc:
            suspect = exc.shard if isinstance(exc, ConnectionError) else None
            if attempt < 2 and conn._cluster.dead(suspect):
                recovery.ensure()  # the replay holds the restarted worker's share if logged
                if logged:
                    return logged[0]
                continue
            if logged and isinstance(exc, ConnectionError):
                raise ConnectionError(
                    f"{exc}; the rows loaded into {relation.name} were logged and the other "
                    "workers committed theirs: the silent worker applies its part when it "
                    "resumes (or from the log if it is replaced), so do not load them again",
                    code=exc.code,
                    shard=exc.shard,
                ) from exc
            raise
    raise AssertionError("unreachable")


def _load(
    conn: Connection,
    relation: Relation,
    paths: list[str],
    opts: FileOptions,
    log_: Log | None,
    logged: list[int] | None = None,
) -> int:
    """One attempt of a load as one transaction; `log_`: write every row to it before the
    commit (and the row count to `logged` once written)."""
    router = conn._router
    cluster = conn._cluster
    n = len(cluster.workers)
    shares = splits.plan(paths, opts, n, relation.name, cluster.worker_cores)
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
    weights = progress.split_bytes(shares)
    total, done = sum(map(sum, weights)), 0
    unread = [set(range(len(share))) for share in shares]
    progress.report("read", 0, total)

    def read_split(shard: int, split: int) -> None:
        nonlocal done
        if split in unread[shard]:
            unread[shard].discard(split)
            done += weights[shard][split]
            progress.report("read", done, total)

    def read_all(reply: Response) -> None:  # a worker's splits not reported one by one
        for split in sorted(unread[reply.shard]):
            read_split(reply.shard, split)

    try:
        pending = {}
        for shard, share in enumerate(shares):
            if share:
                rid = cluster.new_rid()
                request = protocol.ReadFiles(
                    rid, txn, relation.name, schema, keys, n, prefix, opts.format,
                    opts.to_wire(), share, segment_all=log_ is not None,
                )  # fmt: skip
                cluster.send(shard, request)
                pending[rid] = shard
        read = cluster.collect(pending, on_reply=read_all, on_split=read_split)
        began = _phase("read", txn, began)
        for reply in read.values():
            log.debug("load txn %d: worker %d %s", txn, reply.shard, reply.value.get("timings"))
        rows = sum(int(r.value["rows"]) for r in read.values())
        by_dest: dict[int, list[str]] = {}
        for reply in read.values():
            for dest, name in reply.value["segments"]:
                by_dest.setdefault(int(dest), []).append(str(name))
        # mapped before staging unlinks the segments (the mapping keeps their pages)
        mapped = _mapped(by_dest, relation, target, n) if log_ is not None and rows else None
        pending = {}
        for dest, names in by_dest.items():
            rid = cluster.new_rid()
            cluster.send(dest, protocol.StageSegments(rid, txn, relation.name, names))
            pending[rid] = dest
        cluster.collect(pending)
        began = _phase("exchange", txn, began)
        if mapped is not None and log_ is not None:
            data, placement = mapped
            log_.append_batch(relation.name, data, placement)
            del data, mapped
            if logged is not None:
                logged.append(rows)
            began = _phase("log", txn, began)
        committed = cluster.broadcast(lambda rid: protocol.Commit(rid, txn))
        _phase("commit", txn, began)
        progress.report("commit", total, total)
    except BaseException:
        router._abort(txn, list(range(n)))
        _remove_segments(f"{prefix}x{txn}-")
        raise
    for reply in committed:
        router.rows_sent[reply.shard] += int(reply.value or 0)
    return rows


def _through_insert(
    conn: Connection, relation: Relation, paths: list[str], opts: FileOptions
) -> int:
    """Load into a source whose inserts the coordinator's streams must see (its WATERMARK sets
    the cluster watermark, a merged stream counts its rows): the files are read here, on this
    process's cores, and go in as one `insert` call, so every stream sees what one native
    instance fed the file's rows as one insert sees. Read in parallel by the workers, each
    worker's engine would take its rows as separate batches, which moves its watermark (and
    so which rows are late) differently, and no merged stream would hear of them."""
    cores = pa.cpu_count()
    units = splits.plan(paths, opts, 1, relation.name, cores)[0]
    weights = progress.split_bytes([units])[0]
    total, done = sum(weights), 0
    progress.report("read", 0, total)
    footers: dict[str, Any] = {}

    def read(split: FileSplit) -> pa.Table:
        return read_split(split, opts, relation.schema, relation.name, len(units) < cores, footers)

    parts = []
    with ThreadPoolExecutor(max(1, min(cores, len(units)))) as pool:
        for weight, part in zip(weights, pool.map(read, units), strict=True):
            parts.append(part)
            done += weight
            progress.report("read", done, total)
    table = pa.concat_tables(parts) if parts else relation.schema.empty_table()
    rows = conn._accept(relation.name, table)
    conn._flush(relation.name)
    progress.report("commit", total, total)
    return rows


def _mapped(
    by_dest: dict[int, list[str]], relation: Relation, target: Target | None, n: int
) -> tuple[pa.Table, Placement]:
    """Every row of a logged load, mapped from its segments (no copy) in worker order, and
    where they went: by key, whole on a table's home worker, or `counts` rows per worker."""
    parts: list[pa.Table] = []
    counts = [0] * n
    for dest in sorted(by_dest):
        for name in by_dest[dest]:
            with pa.memory_map(os.path.join(SHM_DIR, name)) as mapped:
                part = pa.ipc.open_stream(mapped).read_all()
            parts.append(part)
            counts[dest] += part.num_rows
    data = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    if target is not None and target.home is not None:
        return data, Placement(shard=target.home)
    if target is not None and target.keys:
        return data, Placement(keys=tuple(target.keys))
    return data, Placement(counts=tuple(counts))


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
