"""Durability: the coordinator's on-disk log of catalog statements and ingested batches."""

from laminardb.durability.log import Log, Record, RecordType, is_persistent

__all__ = ["Log", "Record", "RecordType", "is_persistent"]
