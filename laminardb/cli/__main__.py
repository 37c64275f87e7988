"""`python -m laminardb.cli`: the `laminardb-cluster` command."""

from laminardb.cli.app import main

main()
