"""The cluster as a service: one hosted Connection served to other processes over ZeroMQ.

`server` runs the service (`python -m laminardb.service`, started by `laminardb-cluster
start`); `client` is what `laminardb.connect(uri)` returns; `protocol` is their versioned
wire format; `shm` moves a same-host client's Arrow data through /dev/shm; `auth` holds the
CURVE secret handling; `runtime` the per-user state files; `logs` the shard-tagged logging.
"""
