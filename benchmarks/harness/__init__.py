"""The benchmark harness: workloads, probes, profiler, report (driven by benchmarks/cli.py).

Workload modules (`streaming`, `queries`, `batch`) share one interface: `cases(sizes)` and
`run(target, sizes, ctx) -> list[Measurement]`. Every figure is shown as a ratio against one
native instance measured in the same run.
"""
