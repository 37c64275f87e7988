"""Benchmarks: every figure is a ratio against one native instance measured in the same run."""
