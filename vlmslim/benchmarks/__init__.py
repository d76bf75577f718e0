"""Benchmarks: tasks · generate (batched, timed) · metrics · efficiency · run (resume) · report.

`bench` is imported on first use so that `vlmslim.benchmarks.tasks` / `.metrics` stay light.
"""

_RUN_API = ("bench", "bench_many", "run_bench", "BenchConfig")


def __getattr__(name):
    if name in _RUN_API:
        from vlmslim.benchmarks import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
