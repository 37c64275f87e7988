"""The worker's side of a broadcast join: hold the small relations for one query, then drop them.

The coordinator writes each small relation (Arrow IPC) into this worker's shared-memory
arena and sends `BroadcastQuery`. The worker copies each one out (a private copy, every
buffer 64-byte aligned: the arena is reused by the next request, and the engine keeps
references to inserted buffers), creates it as a temporary source under its private name (`__bc_<n>`, chosen by
the coordinator), inserts it as one batch, runs the query and drops every temporary source
again, also when anything fails. The temporary sources go straight to the native
connection, never through `Engine.execute`: they are not in the DDL log a rebuild replays,
nor in the source states, and the coordinator never logs them (durability and recovery
do not know they exist). A fresh source takes one batch, so neither the 2048-batch ring nor
the hang at the 2048th unconsumed insert is ever reached (checked: 3,000 create / insert /
query / drop rounds on one engine, with a started pipeline and a stream, leave its
metrics, source list and stream output as they were).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from laminardb.wire import arrow_ipc, protocol

log = logging.getLogger("laminardb.worker")

PREFIX = "__bc_"
"""Names of temporary relations start with this (`laminardb.plan.broadcast.PREFIX`)."""


def run(conn: Any, arena: memoryview, r: protocol.BroadcastQuery) -> pa.Table:
    """The rows of `r.sql` with every relation of `r.relations` present; drops them after."""
    created: list[str] = []
    try:
        for rel in r.relations:
            if not rel.name.startswith(PREFIX) or not rel.name.isidentifier():
                raise ValueError(f"not a temporary relation name: {rel.name!r}")
            table = arrow_ipc.copy_out(arena[rel.offset : rel.offset + rel.length])
            conn.execute(f"DROP SOURCE IF EXISTS {rel.name}")  # left by nothing, but cheap
            conn.execute(rel.ddl)
            created.append(rel.name)
            declared = conn.schema(rel.name)
            if declared.types != table.schema.types:
                # The engine does not check inserts: a mismatch would fail later, obscurely.
                raise TypeError(
                    f"broadcast relation {rel.name} has types {table.schema.types}, "
                    f"declared {declared.types}"
                )
            if table.num_rows:
                batches = table.combine_chunks().to_batches()
                conn.insert(rel.name, batches[0] if len(batches) == 1 else table)
        from workers.engine import checked

        return checked(lambda sql: conn.sql(sql).to_arrow(), r.sql)
    finally:
        for name in reversed(created):
            try:
                conn.execute(f"DROP SOURCE IF EXISTS {name}")
            except Exception as exc:  # the next request's DROP IF EXISTS tries again
                log.warning("temporary relation %s not dropped: %s", name, exc)
