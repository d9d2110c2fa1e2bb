"""bench/gpu/ddp_search_cost.py on the tiny model (CPU, gloo): it prints the node count and the timing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_search_cost_on_the_tiny_config():
    cmd = [
        sys.executable,
        "bench/gpu/ddp_search_cost.py",
        "tests/bench/configs/tiny_scaling.py",
        "--repeats",
        "3",
    ]
    env = {**os.environ, "MASTER_PORT": str(free_port())}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    row = re.search(
        r"\| tests/bench/configs/tiny_scaling.py \| cpu \| (\d+) \| ([\d.]+) / ([\d.]+) \|", proc.stdout
    )
    assert row, proc.stdout
    nodes, fastest, median = int(row[1]), float(row[2]), float(row[3])
    assert nodes > 100 and 0 < fastest <= median
