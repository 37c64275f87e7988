"""`python -m laminardb.service`: run the service in this process (the CLI's `start` spawns
it detached). Exit codes: 0 stopped cleanly, 1 failed, 2 bad arguments, 4 already running."""

from __future__ import annotations

import sys

from laminardb.service.daemon import main

if __name__ == "__main__":
    sys.exit(main())
