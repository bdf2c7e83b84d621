"""Side-by-side benchmarks (not timed tests): run ``python benchmarks/run_all.py``."""
