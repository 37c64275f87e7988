"""`laminardb-cluster`: start, watch, query and stop a local laminardb service (click + rich)."""
