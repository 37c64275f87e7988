"""Worker restart: a worker that died is started again and rebuilt from the log, exactly once.

What a dead worker held exists in one place only: the log (laminardb/durability/log.py).
Every statement and every shipped batch is logged *before* any worker commits it
(write-ahead, through `Router.before_commit`), and each batch's log entry remembers where its
rows went in this session (`Placement`: hashed by key, sliced over all workers, or whole on
one worker). Rebuilding worker k therefore replays the log in order on worker k alone: the
catalog statements (those that ran on every worker; `UPDATE`/`DELETE`/`INSERT` into tables
ran on worker 0 only) and, of every batch, the part that was worker k's. Each acknowledged
row comes back once: rows of a batch logged but not yet committed when the worker died are
part of the replay, and the interrupted insert is then complete (it is not sent again).

`:memory:` databases keep no log by default (the user asked for no disk), so the rows of a
dead worker are lost: the connection then fails every call with a `ConnectionError` naming
the worker and saying so, rather than answer from partial data. `open(":memory:",
recovery=True)` keeps a private temporary log (removed at close) so that workers are
restarted as with a path.

Detection: every call checks liveness before it starts (`ensure`), a call waiting on a
worker notices its death within a poll tick (laminardb/cluster/supervisor.py), and a
monitor thread restarts a dead worker within a fraction of a second even when no call is
made. A restart is bounded (process start deadline, request deadlines), so calls waiting for
the connection's lock during it never hang. After a restart, `hooks` are called with the
shard (the streams layer re-subscribes that worker's forwarding).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from laminardb.api.errors import ConnectionError, LaminarError, codes
from laminardb.cluster.supervisor import Cluster
from laminardb.durability.log import Log, RecordRef, RecordType
from laminardb.ingest import partition
from laminardb.ingest.router import SPLIT_ROWS, Router, Target
from laminardb.plan import statements
from laminardb.plan.statements import StatementKind
from laminardb.wire import protocol

log = logging.getLogger("laminardb.recovery")
T = TypeVar("T")

MONITOR_S = 0.1
REPLAY_ROWS = 1 << 20  # rows of one source sent to a rebuilt worker in one transaction
REPLAY_BYTES = 64 << 20
# Logged statements that ran on worker 0 only (the home of CREATE TABLE tables).
_HOME_ONLY = {StatementKind.UPDATE, StatementKind.DELETE, StatementKind.INSERT}


@dataclass(frozen=True)
class Placement:
    """Where the rows of one shipped batch went: by key, whole on `shard`, `counts[i]` rows
    in order to worker i (a logged file load), or sliced evenly."""

    keys: tuple[str, ...] = ()
    shard: int | None = None
    counts: tuple[int, ...] = ()


def placement_of(target: Target, parts: list[pa.Table | None]) -> Placement:
    """The placement `Router._parts` chose, from the source's target and the parts it made."""
    if target.home is not None:
        return Placement(shard=target.home)
    if target.keys:
        return Placement(keys=tuple(target.keys))
    involved = [i for i, part in enumerate(parts) if part is not None]
    if len(involved) == 1:
        return Placement(shard=involved[0])
    return Placement()


def part_for(table: pa.Table, placement: Placement, shard: int, n_workers: int) -> pa.Table:
    """The rows of `table` that worker `shard` of `n_workers` got (same arithmetic as
    `Router._parts` and `partition.split`)."""
    if placement.keys:
        if n_workers == 1:
            return table
        mine = partition.vshards(table, placement.keys) % np.uint16(n_workers) == shard
        return table.take(np.flatnonzero(mine))
    if placement.shard is not None:
        return table if placement.shard == shard else table.slice(0, 0)
    if placement.counts:
        return table.slice(sum(placement.counts[:shard]), placement.counts[shard])
    step = -(-table.num_rows // n_workers)
    return table.slice(shard * step, step)


class RecoveringRouter(Router):
    """The router, with its batches logged before commit and retried across a worker restart."""

    def __init__(self, cluster: Cluster, split_rows: int = SPLIT_ROWS):
        super().__init__(cluster, split_rows)
        self.recovery: Recovery | None = None
        self.placement = Placement()  # of the batch being shipped
        self.before_commit = self._log_batch

    def _parts(self, source: str, table: pa.Table) -> list[pa.Table | None]:
        parts = super()._parts(source, table)
        self.placement = placement_of(self.targets.get(source, Target()), parts)
        return parts

    def add(self, source: str, table: pa.Table) -> None:
        """Buffer like `Router.add`; with `durability="sync"` ship at once, so that the insert
        returns only when its rows are in the log, fsynced (and committed)."""
        super().add(source, table)
        recovery = self.recovery
        if (
            recovery is not None
            and recovery.logging
            and recovery.log is not None
            and recovery.log.durability == "sync"
        ):
            self.flush(source)

    def _log_batch(self, source: str, table: pa.Table) -> None:
        recovery = self.recovery
        if recovery is not None and recovery.log is not None and recovery.logging:
            recovery.log.append_batch(source, table, self.placement)

    def ship(self, source: str, table: pa.Table) -> int:
        """Ship like `Router.ship`; if a worker dies meanwhile, restart it and finish the job.

        A batch already logged when the worker died is part of the restarted worker's replay
        (and the live workers committed theirs), so it is not sent again; one not yet logged
        was aborted everywhere and is shipped again.
        """
        recovery = self.recovery
        if recovery is None:
            return super().ship(source, table)
        log_ = recovery.log if recovery.logging else None
        for attempt in range(3):
            logged = len(log_.refs) if log_ is not None else 0
            try:
                return super().ship(source, table)
            except LaminarError as exc:
                written = log_ is not None and len(log_.refs) > logged
                if attempt < 2 and log_ is not None and self.cluster.dead(_suspect(exc)):
                    recovery.ensure()  # the replay includes this batch if it was logged
                    if written:
                        return int(table.num_rows)
                    continue
                if written and isinstance(exc, ConnectionError):
                    raise ConnectionError(
                        f"{exc}; the {table.num_rows} rows for {source} were logged and the "
                        "other workers committed theirs: the silent worker applies its part "
                        "when it resumes (or from the log if it is replaced), so do not send "
                        "them again",
                        code=exc.code,
                        shard=exc.shard,
                    ) from exc
                raise
        raise AssertionError("unreachable")


class Recovery:
    """Restarts dead workers and rebuilds them from `log` (None: rows cannot be rebuilt)."""

    def __init__(self, cluster: Cluster, router: Router, log_: Log | None):
        self.cluster = cluster
        self.router = router
        self.log = log_
        self.logging = False  # set by the connection once the log has been replayed
        self.hooks: list[Callable[[int], None]] = []
        self.lost: LaminarError | None = None
        self._failed: LaminarError | None = None
        self._statement: RecordRef | None = None  # the logged statement now running
        self._kept = False
        if isinstance(router, RecoveringRouter):
            router.recovery = self
        self._monitor = threading.Thread(
            target=_monitor,
            args=(weakref.ref(self), cluster),
            name="laminardb-recovery",
            daemon=True,
        )
        self._monitor.start()

    # -- restoring a database on open ------------------------------------------------------

    def restore(self, execute: Callable[[str], object]) -> int:
        """Replay the log on open: statements to `execute`, batches through the router (which
        records where their rows went this time). Returns the records replayed."""
        assert self.log is not None
        count = 0
        for ref, record in self.log.replay_refs():
            if record.type is RecordType.DDL:
                execute(record.sql)
            elif record.type is RecordType.WATERMARK:
                self.router.flush(record.source)
                args = [record.source, record.watermark]
                self.cluster.broadcast(lambda rid, args=args: protocol.Call(rid, "watermark", args))
            else:
                self.router.ship(record.source, record.table())
                ref.placement = getattr(self.router, "placement", None)
            count += 1
        return count

    @contextlib.contextmanager
    def statement(self, sql: str | None) -> Iterator[None]:
        """Log `sql` before it runs (None: not logged); retract it if it fails, unless some
        workers applied it (`keep_statement`: then it stays, and is applied everywhere)."""
        if sql is None or self.log is None or not self.logging:
            yield
            return
        ref = self.log.append_ddl(sql)
        self._statement, self._kept = ref, False
        try:
            yield
        except BaseException:
            if not self._kept and self.log.refs and self.log.refs[-1] is ref:
                self.log.retract(ref)
            raise
        finally:
            self._statement, self._kept = None, False

    def keeps(self, sql: str) -> bool:
        """Whether the statement now running was logged (so it can be kept as applied after
        an outage on some workers, rather than undone)."""
        return self.log is not None and self.logging and self._statement is not None

    def keep_statement(self) -> None:
        """Keep the statement now running in the log even though its call fails (some
        workers applied it; the others apply it from their queue or from the log)."""
        self._kept = True

    @contextlib.contextmanager
    def watermark(self, source: str, timestamp: int) -> Iterator[None]:
        """Log a watermark set on `source` before it is applied (write-ahead, like a
        statement), so that a restarted worker and a reopened database get it again, in
        its place among the rows; retract it if applying it fails with an engine error."""
        if self.log is None or not self.logging:
            yield
            return
        ref = self.log.append_watermark(source, timestamp)
        try:
            yield
        except LaminarError as exc:
            if not isinstance(exc, ConnectionError) and self.log.refs and self.log.refs[-1] is ref:
                self.log.retract(ref)
            raise

    # -- restarting workers ----------------------------------------------------------------

    def retry(self, read: Callable[[], T]) -> T:
        """Run `read` (a query: no side effects); if a worker died during it, restart it and
        run `read` once more. Without a log the first error stands (its rows are lost)."""
        try:
            return read()
        except LaminarError as exc:
            if self.log is None or not self.logging or not self.cluster.dead(_suspect(exc)):
                raise
            self.ensure()
        return read()

    def ensure(self) -> None:
        """Restart and rebuild every dead worker (caller holds the cluster lock), or raise."""
        if self.lost is not None:
            raise self.lost
        for worker in self.cluster.dead():
            self.restart(worker.shard)

    def restart(self, shard: int) -> None:
        """Start worker `shard` again and replay its catalog and rows from the log."""
        old = self.cluster.workers[shard]
        why = f"{old.describe()} died (exit code {old.exitcode})"
        if self.log is None:
            self.lost = ConnectionError(
                f"{why} and the rows of its shard are lost: an in-memory database keeps them "
                "nowhere else, so this connection cannot answer correctly any more; open it "
                'with a path, or open(":memory:", recovery=True), to have workers restarted',
                code=codes.CONNECTION_FAILED,
                shard=shard,
            )
            raise self.lost
        try:
            self.cluster.restart(shard)
            replayed = self._rebuild(shard)
        except LaminarError as exc:
            self._failed = ConnectionError(
                f"{why} and could not be restarted: {exc}",
                code=codes.CONNECTION_FAILED,
                shard=shard,
            )
            raise self._failed from exc
        self._failed = None
        log.warning("%s; restarted and rebuilt (%d rows replayed)", why, replayed)
        for hook in self.hooks:
            hook(shard)

    def _rebuild(self, shard: int) -> int:
        assert self.log is not None
        n = len(self.cluster.workers)
        pending: dict[str, list[pa.Table]] = {}
        rows = 0

        def flush(source: str | None = None) -> None:
            nonlocal rows
            for name in [source] if source is not None else list(pending):
                parts = pending.pop(name, [])
                if parts:
                    rows += self._insert(shard, name, pa.concat_tables(parts))

        for ref, record in self.log.read(list(self.log.refs)):
            if ref.type is RecordType.DDL:
                flush()
                stmt = statements.classify(record.sql)
                if stmt.kind in _HOME_ONLY and shard != 0:
                    continue
                name = stmt.raw_name or stmt.name
                self.cluster.request(
                    shard,
                    protocol.Execute(self.cluster.new_rid(), stmt.sql, stmt.kind.name, name),
                )
                continue
            if ref.type is RecordType.WATERMARK:
                flush()  # its rows first, as when it was set
                self.cluster.request(
                    shard,
                    protocol.Call(
                        self.cluster.new_rid(), "watermark", [ref.source, record.watermark]
                    ),
                )
                continue
            placement = ref.placement
            if not isinstance(placement, Placement):
                raise ConnectionError(f"log record at byte {ref.offset} has no placement")
            part = part_for(record.table(), placement, shard, n)
            if part.num_rows:
                queue = pending.setdefault(ref.source, [])
                queue.append(part)
                if sum(t.num_rows for t in queue) >= REPLAY_ROWS or (
                    sum(t.nbytes for t in queue) >= REPLAY_BYTES
                ):
                    flush(ref.source)
        flush()
        if self._peer_started(shard):
            self.cluster.request(shard, protocol.Call(self.cluster.new_rid(), "start", []))
            # The replayed rows' stream results were sent before the crash: drop them (the
            # hooks re-subscribe the forwarding only after this).
            self.cluster.request(shard, protocol.Call(self.cluster.new_rid(), "quiesce", []))
        return rows

    def _insert(self, shard: int, source: str, table: pa.Table) -> int:
        """Stage and commit `table` on worker `shard` alone (not logged: it is the log)."""
        txn = self.cluster.next_txn()
        self.router._stage(txn, source, {shard: table})
        self.cluster.request(shard, protocol.Commit(self.cluster.new_rid(), txn))
        return int(table.num_rows)

    def _peer_started(self, shard: int) -> bool:
        """Whether the other workers' pipelines run (then the rebuilt one's must too)."""
        for worker in self.cluster.workers:
            if worker.shard != shard and worker.alive:
                reply = self.cluster.request(
                    worker.shard, protocol.Call(self.cluster.new_rid(), "stats", [])
                )
                return bool(reply.value.get("started"))
        return False


def _suspect(exc: LaminarError) -> int | None:
    """The worker a channel failure names (engine errors name a live worker: none)."""
    return exc.shard if isinstance(exc, ConnectionError) else None


def resubscribe(hub: Any) -> Callable[[int], None]:
    """A restart hook that makes a restarted worker forward the streams the hub follows."""
    hook = getattr(hub, "on_worker_restart", None)
    if callable(hook):
        return hook  # type: ignore[no-any-return]

    def again(shard: int) -> None:
        for name in sorted(getattr(hub, "_forwarded", ())):
            hub._cluster.request(shard, protocol.Subscribe(hub._cluster.new_rid(), name))

    return again


def _monitor(ref: weakref.ref[Recovery], cluster: Cluster) -> None:
    """Restart dead workers promptly even when no call is made (until the cluster closes)."""
    while not cluster.closed:
        threading.Event().wait(MONITOR_S)
        recovery = ref()
        if recovery is None or recovery.log is None:
            return
        if (
            not cluster.closed
            and recovery.lost is None
            and recovery._failed is None
            and cluster.dead()
            and cluster.lock.acquire(timeout=MONITOR_S)
        ):
            try:
                if not cluster.closed:
                    recovery.ensure()
            except LaminarError as exc:
                log.error("worker restart failed: %s", exc)
            finally:
                cluster.lock.release()
        del recovery
