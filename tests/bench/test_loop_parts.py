"""bench/gpu/loop_parts.py: the table's arithmetic on hand-written iterations, and a real tiny run of
``tools/train.py`` through it (CPU, 6 iterations, 2 loader workers; ~20 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.gpu.loop_parts import WAIT, LoopTimers, format_table
from tests.tiny import ROOT


def test_table_means_shares_and_other() -> None:
    timers = LoopTimers()
    timers.iterations = [
        {"train_step": 9.0, "next(batch)": 1.0, WAIT: 0.5, "wall": 11.0},  # warm-up, left out
        {"train_step": 0.5, "next(batch)": 0.2, WAIT: 0.1, "model.train()": 0.1, "wall": 1.0},
        {"train_step": 0.7, "next(batch)": 0.4, WAIT: 0.3, "wall": 1.2},
    ]
    rows = {r["part"]: r for r in timers.table(warmup=1)}
    assert list(rows)[-1] == "wall"
    assert rows["wall"]["mean_ms"] == pytest.approx(1100.0)
    assert rows["train_step"]["mean_ms"] == pytest.approx(600.0)
    assert rows["model.train()"]["mean_ms"] == pytest.approx(50.0)  # absent from one iteration: 0 there
    assert rows[WAIT]["mean_ms"] == pytest.approx(200.0)
    # other = wall - parts, the wait counted once (inside next(batch)): (1.0-0.8 + 1.2-1.1) / 2
    assert rows["other"]["mean_ms"] == pytest.approx(150.0)
    assert rows["train_step"]["share"] == pytest.approx(600 / 1100)
    with pytest.raises(ValueError, match="no iteration after the first 3"):
        timers.table(warmup=3)
    assert "| train_step | 600.00 | 54.5 % |" in format_table(timers.table(1), 2, 1)


def test_real_tiny_run(tmp_path) -> None:
    out = tmp_path / "parts.json"
    cmd = [
        sys.executable, "bench/gpu/loop_parts.py", "--warmup", "1", "--sample-ms", "1",
        "--out-json", str(out), "--", "projects/sa2va/configs/sa2va_tiny_demo.py",
        "--work-dir", str(tmp_path / "work"), "--cfg-options", "train_cfg.max_epochs=None",
        "train_cfg.max_iters=6", "train_dataloader.num_workers=2", "train_dataloader.persistent_workers=True",
        "default_hooks.checkpoint=None", "val_cfg=None", "val_dataloader=None", "val_evaluator=None",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    its = data["iterations"]
    assert len(its) == 5  # 6 iterations; the last one has no end
    for it in its:
        parts = sum(v for k, v in it.items() if k not in ("wall", WAIT))
        assert 0 < parts <= it["wall"] + 1e-6
        assert it.get(WAIT, 0.0) <= it["next(batch)"] + 1e-9  # the wait is inside next()
        assert {"train_step", "next(batch)", "after:RuntimeInfoHook", "after:IterTimerHook"} <= set(it)
    rows = {r["part"]: r["mean_ms"] for r in data["rows"]}
    assert rows["train_step"] == pytest.approx(1000 * sum(it["train_step"] for it in its[1:]) / 4)
    assert "Host time per tools/train.py iteration (mean of 4 iterations after the first 1)" in res.stdout
    # the window (after the iteration timer's hook to the next iteration) holds next(batch)
    assert data["window_samples"] > 0
    assert any("loops.py:run" in stack for stack, _ in data["window_stacks"])
