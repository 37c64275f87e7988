"""Logging with the shard in every record: `%(shard)s` is the worker's shard number, or
`coord` for records of the coordinator/service process.

`configure(shard)` installs a stderr handler whose format shows it; `ShardFilter` alone can
be attached to any handler (it only adds the attribute, so records of libraries that never
heard of shards are formatted too).
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s [%(shard)s] %(levelname)s %(name)s: %(message)s"


class ShardFilter(logging.Filter):
    """Sets `record.shard` (unless the record already has one)."""

    def __init__(self, shard: int | None = None) -> None:
        super().__init__()
        self.shard = "coord" if shard is None else f"worker {shard}"

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "shard"):
            record.shard = self.shard
        return True


def configure(shard: int | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the `laminardb` loggers to stderr, each record tagged with `shard`."""
    handler = logging.StreamHandler()
    handler.addFilter(ShardFilter(shard))
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
