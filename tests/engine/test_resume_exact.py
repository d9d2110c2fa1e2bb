"""A run SIGKILLed mid-epoch and resumed (``--resume auto``) reproduces an uninterrupted run exactly.

Tiny model on CPU, 8 images / batch 2 = 4 iterations per epoch, 6 iterations, LoRA dropout 0.1 (so the
random state matters), checkpoints every 2 iterations. The killed run dies after iteration 3 (last
checkpoint: iteration 2, mid-epoch); the resumed run skips 2 batches, crosses the epoch boundary at 4.
"""

from __future__ import annotations

import signal

import pytest

from projects.sa2va.engine.hooks import read_loss_records
from tests.procs import start_tiny_fault_training as train


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers",
    [(), ("train_dataloader.num_workers=2", "train_dataloader.persistent_workers=True")],
    ids=["no-workers", "two-workers"],  # one DataLoader iterator per epoch / one per run (EpochChain)
)
def test_sigkill_then_resume_auto_reproduces_losses_exactly(tmp_path, workers):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()
    ref = train(ref_dir, log="reference.log", cfg_options=workers)
    killed = train(run_dir, log="killed.log", cfg_options=("custom_hooks.0.at=3", *workers))
    rc_killed = killed.wait(timeout=300)
    log = (tmp_path / "killed.log").read_text()
    assert rc_killed == -signal.SIGKILL, f"expected SIGKILL, got {rc_killed}:\n{log[-3000:]}"
    assert (run_dir / "iter_2.pth").is_file() and not (run_dir / "iter_4.pth").exists()
    resumed = train(run_dir, "--resume", "auto", log="resumed.log", cfg_options=workers)
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
