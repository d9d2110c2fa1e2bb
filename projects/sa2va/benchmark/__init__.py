"""Speed / memory benchmark of Sa2VA training at real shapes with random weights (``tools/benchmark.py``)."""
