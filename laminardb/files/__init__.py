"""Batch files in and out: `load()` / `COPY ... FROM` read by the workers, `COPY ... TO` writes.

`options` parses formats and options, `splits` cuts files into pieces for the workers,
`read` turns one piece into rows of exactly the source schema (the same checks as
`insert`), `load` runs the transaction from the coordinator, `copy` parses COPY statements
and `write` writes results. The worker side of a load is `workers/files.py`.
"""
