"""``--resume`` into a run that no longer fits the checkpoint is refused before the first iteration; a
fresh run in a work dir that holds an earlier run's checkpoints says so.

The optimiser and the learning-rate schedule continue from the checkpoint, so a run made longer on resume
would keep the old schedule (the learning rate stuck at its final value for the added iterations), and the
resumed position in the data order assumes the checkpoint's batches per epoch. Both used to pass silently
(a longer run at a frozen learning rate; a changed batch size trained 0 iterations and exited 0).
"""

from __future__ import annotations

import pytest

from projects.sa2va.checkpoint.safe_load import load_checkpoint_file
from tests.engine.test_launch import run_train
from tests.procs import TINY_FAULT_CFG, TINY_FAULT_OPTIONS

# The tiny demo's cosine ends at its 10 epochs; here it ends with the 1.5-epoch run (6 iterations).
SCHEDULE = ("param_scheduler.1.end=1.5",)


def train(work, *options: str, resume: bool = False) -> tuple[int, str]:
    """``tools/train.py`` on the tiny fault config in ``work`` (``--resume auto`` when ``resume``)."""
    flags = ("--resume", "auto") if resume else ()
    proc = run_train(
        TINY_FAULT_CFG, "--work-dir", str(work), *flags, "--cfg-options", *TINY_FAULT_OPTIONS, *options
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_resume_with_another_length_or_batch_is_refused(tmp_path):
    work = tmp_path / "work"
    rc, out = train(work, *SCHEDULE)
    assert rc == 0, out[-3000:]
    meta = load_checkpoint_file(work / "iter_6.pth")["meta"]
    assert (meta["iters_per_epoch"], meta["world_size"]) == (4, 1)

    # Longer: the config's own schedule covers 3 epochs, the checkpoint's ends at iteration 6.
    rc, out = train(work, "train_cfg.max_epochs=3", "param_scheduler.1.end=3", resume=True)
    assert rc != 0, out[-3000:]
    assert "iter_6.pth: its learning-rate schedule ends at iteration 6, this run trains to 12" in out
    assert "start a new run from its weights (`load_from`, without --resume)" in out
    assert "Iter(train) [7/12]" not in out

    # Another batch size: 2 batches per epoch instead of 4.
    rc, out = train(
        work,
        "train_dataloader.batch_size=4",
        "train_cfg.max_epochs=6",
        "param_scheduler.1.end=6",
        resume=True,
    )
    assert rc != 0, out[-3000:]
    assert "iter_6.pth was trained with 4 batches per epoch, this run has 2" in out
    assert "The batch size or the dataset changed" in out

    # The same run resumes (nothing left to train: it ends at once, as before).
    rc, out = train(work, *SCHEDULE, resume=True)
    assert rc == 0, out[-3000:]

    # A fresh run (no --resume) in the same work dir says that the earlier run's checkpoints stay there.
    rc, out = train(work, "train_cfg.max_epochs=0.5")
    assert rc == 0, out[-3000:]
    assert (
        f"{work} already holds 3 checkpoint(s) of an earlier run (iter_2.pth, iter_4.pth, iter_6.pth)" in out
    )
