"""ProfileItersHook: a trace and operator tables of the chosen iterations, per rank (tiny model, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from bench.harness.profile_hook import ProfileItersHook

ROOT = Path(__file__).resolve().parents[2]


def test_profile_configs_load_and_bad_window_is_rejected():
    cfg = Config.fromfile(str(ROOT / "bench/gpu/scaling_1b_profile_cfg.py"))
    assert [h["type"] for h in cfg.custom_hooks][-1] is ProfileItersHook
    with pytest.raises(ValueError, match="start=0"):
        ProfileItersHook(start=0)


@pytest.mark.slow
def test_profile_of_two_iterations_on_cpu(tmp_path):
    cmd = [
        sys.executable,
        "tools/train.py",
        "tests/bench/configs/tiny_profile.py",
        "--work-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "profile of iterations 2..3" in out
    trace = json.loads((tmp_path / "profile.rank0.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("ProfilerStep" in n or n.startswith("aten::") for n in names)
    table = (tmp_path / "profile.rank0.txt").read_text()
    assert table.startswith("iterations 2..3, rank 0") and "aten::" in table
