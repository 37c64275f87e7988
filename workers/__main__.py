"""`python -m workers laminardb-worker SPEC_JSON`: how the coordinator starts a worker."""

from __future__ import annotations

import sys

from workers.server import WorkerSpec, run

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "laminardb-worker":
        sys.exit("workers are started by laminardb.open(), not by hand")
    run(WorkerSpec.from_json(sys.argv[2]))
