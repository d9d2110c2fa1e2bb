"""CPU smoke test of bench/gpu/checkpoint_bench.py (tiny preset)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "bench/gpu/checkpoint_bench.py"


def test_tiny_bench_runs_and_prints_a_table(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("checkpoint_bench", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--preset", "tiny", "--device", "cpu", "--workdir", str(tmp_path / "wd")])
    out = capsys.readouterr().out
    for phase in ("write source folder", "build + load (HFSa2VALoader)", "export merged (convert_to_hf)"):
        assert phase in out
    assert "peak RSS GiB" in out
    assert not (tmp_path / "wd").exists()
