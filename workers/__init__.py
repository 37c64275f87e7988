"""The worker process: one native engine serving one shard."""
