"""`python -m benchmarks`: the `bench` command (see benchmarks/cli.py)."""

from benchmarks.cli import bench

if __name__ == "__main__":
    bench()
