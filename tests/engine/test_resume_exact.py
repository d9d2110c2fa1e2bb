"""A run SIGKILLed mid-epoch and resumed (``--resume auto``) reproduces an uninterrupted run exactly.

Tiny model on CPU, 8 images / batch 2 = 4 iterations per epoch, 6 iterations, LoRA dropout 0.1 (so the
random state matters), checkpoints every 2 iterations. The killed run dies after iteration 3 (last
checkpoint: iteration 2, mid-epoch); the resumed run skips 2 batches, crosses the epoch boundary at 4.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from projects.sa2va.engine.hooks import read_loss_records

ROOT = Path(__file__).resolve().parents[2]
CFG = "tests/engine/configs/tiny_fault.py"
OPTIONS = [
    "train_dataloader.dataset.ann_file=data/chase_db1/annotations_test.json",
    "train_cfg.max_epochs=1.5",
    "default_hooks.checkpoint.interval=2",
    "model.lora.dropout=0.1",
]


def train(work_dir: Path, *extra: str, log: str, cfg_options: tuple[str, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "tools/train.py", CFG, "--work-dir", str(work_dir), *extra]
    cmd += ["--cfg-options", *OPTIONS, *cfg_options]
    with open(work_dir.parent / log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_then_resume_auto_reproduces_losses_exactly(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()
    ref = train(ref_dir, log="reference.log")
    killed = train(run_dir, log="killed.log", cfg_options=("custom_hooks.0.at=3",))
    rc_killed = killed.wait(timeout=300)
    log = (tmp_path / "killed.log").read_text()
    assert rc_killed == -signal.SIGKILL, f"expected SIGKILL, got {rc_killed}:\n{log[-3000:]}"
    assert (run_dir / "iter_2.pth").is_file() and not (run_dir / "iter_4.pth").exists()
    resumed = train(run_dir, "--resume", "auto", log="resumed.log")
    rc_resumed, rc_ref = resumed.wait(timeout=300), ref.wait(timeout=300)
    for name, rc in (("resumed", rc_resumed), ("reference", rc_ref)):
        assert rc == 0, f"{name} run failed:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert "resuming at iteration 2 = epoch 0 + 2 batches" in resumed_log

    expected = read_loss_records(ref_dir / "train_losses.jsonl")
    got = read_loss_records(run_dir / "train_losses.jsonl")  # killed run's 1..3, then the resumed 3..6
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for it in expected:
        for key in ("loss", "loss_lm", "loss_mask", "loss_dice", "lr"):
            assert got[it][key] == expected[it][key], (
                f"iteration {it} {key}: {got[it][key]} != {expected[it][key]}"
            )
