"""Queries a worker answers from the batches it handed its engine (issue 3): the batches
and what was learnt from the engine (`batches`), whole-source aggregates (`aggregates`),
key lookups (`lookups`)."""
