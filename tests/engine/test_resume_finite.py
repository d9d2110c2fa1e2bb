"""``--resume auto`` never lands on weights that diverged: the checkpoint of the non-finite-loss stop (marked
in its meta), the checkpoints saved during those non-finite losses (same weights), and checkpoints holding a
NaN / inf in a trained tensor or the optimiser state are passed over with a warning naming the file and the
reason; the stop's message says whether the weights it kept are finite and names the checkpoint from before
the non-finite losses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger
from torch import nn

from projects.sa2va.checkpoint.safe_load import load_checkpoint_file
from projects.sa2va.engine.state import (
    NONFINITE_FROM_KEY,
    NONFINITE_STOP_KEY,
    POINTER_NAME,
    find_resumable_checkpoint,
    nonfinite_stop_message,
)


def save(path: Path, step: int, *, w: float = 1.0, exp_avg: float = 0.0, mtime: float, **meta) -> Path:
    """A checkpoint laid out as Sa2VARunner writes it (meta, trainable state_dict, AdamW state)."""
    torch.save(
        {
            "meta": {"iter": step, "epoch": 0, **meta},
            "state_dict": {"head.weight": torch.full((4, 3), w), "head.bias": torch.zeros(4)},
            "optimizer": {
                "state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.full((4, 3), exp_avg)}},
                "param_groups": [{"lr": 1e-4, "params": [0, 1]}],
            },
        },
        path,
    )
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    seen: list[str] = []
    logger = MMLogger.get_current_instance()
    monkeypatch.setattr(logger, "warning", lambda msg, *a, **k: seen.append(str(msg)))
    return seen


def test_the_stop_and_the_checkpoints_of_its_nonfinite_run_are_passed_over(tmp_path, warnings) -> None:
    # Non-finite losses from iteration 2 (0-based) on; updates skipped: iter_2..iter_4 hold the same weights.
    good = save(tmp_path / "iter_1.pth", 1, w=1.0, mtime=1000)
    save(tmp_path / "iter_2.pth", 2, w=2.0, mtime=1001)
    save(tmp_path / "iter_3.pth", 3, w=2.0, mtime=1002)
    stop = save(
        tmp_path / "iter_4.pth", 4, w=2.0, mtime=1003, **{NONFINITE_STOP_KEY: True, NONFINITE_FROM_KEY: 2}
    )
    (tmp_path / POINTER_NAME).write_text(str(stop))
    assert find_resumable_checkpoint(tmp_path) == str(good)
    text = "\n".join(warnings)
    assert f"{POINTER_NAME} names {stop}, which was saved by the non-finite-loss stop" in text
    for name in ("iter_3.pth", "iter_2.pth"):
        assert (
            f"passing over {tmp_path / name}: saved during the non-finite losses that stopped training "
            "at iter_4.pth" in text
        )
    assert str(good) not in text
    # A later run resumed from iter_1 (lower learning rate) wrote a new iter_2 after the stop: it is used.
    newer = save(tmp_path / "iter_2.pth", 2, w=1.5, mtime=2000)
    (tmp_path / POINTER_NAME).unlink()
    assert find_resumable_checkpoint(tmp_path) == str(newer)
    # before_step (what the stop uses to name the earlier checkpoint): only steps below it.
    assert find_resumable_checkpoint(tmp_path, before_step=2) == str(good)
    assert find_resumable_checkpoint(tmp_path, before_step=1) is None


@pytest.mark.parametrize("where", ["weights", "optimizer"])
def test_nonfinite_values_are_passed_over(tmp_path, warnings, where: str) -> None:
    good = save(tmp_path / "iter_2.pth", 2, mtime=1000)
    bad = (
        save(tmp_path / "iter_4.pth", 4, w=float("nan"), mtime=1001)
        if where == "weights"
        else save(tmp_path / "iter_4.pth", 4, exp_avg=float("inf"), mtime=1001)
    )
    (tmp_path / POINTER_NAME).write_text(str(bad))
    assert find_resumable_checkpoint(tmp_path) == str(good)
    name = "head.weight" if where == "weights" else "optimizer.state[0].exp_avg"
    assert any(f"holds non-finite values in 1 tensor(s) (e.g. ['{name}'])" in w for w in warnings), warnings
    save(tmp_path / "iter_2.pth", 2, w=float("-inf"), mtime=1000)
    assert find_resumable_checkpoint(tmp_path) is None  # nothing usable: a fresh start


def test_stop_message_says_whether_the_kept_weights_are_finite() -> None:
    model = nn.Linear(3, 2)
    finite = nonfinite_stop_message(model, "w/iter_9.pth", "w/iter_4.pth")
    assert "w/iter_9.pth holds the weights of the last update with a finite loss" in finite
    assert "they are finite (largest trained |weight| = " in finite and "do not resume from them" in finite
    assert "automatic resume passes over this file" in finite and "`--resume w/iter_4.pth`" in finite
    with torch.no_grad():
        model.bias[1] = float("nan")
    broken = nonfinite_stop_message(model, "w/iter_9.pth", None)
    assert "1 trained tensor(s) are non-finite themselves (e.g. ['bias']" in broken
    assert "no earlier checkpoint exists; restart from scratch" in broken


@pytest.mark.slow
def test_runner_stop_marks_its_checkpoint_and_resume_auto_goes_back_before_the_nan_losses(tmp_path) -> None:
    from projects.sa2va.engine.optim import NonFiniteLossError
    from tests.engine.test_runner_faults import build_runner

    opts = {
        "train_cfg.max_epochs": 0.5,  # 5 iterations
        "default_hooks.checkpoint.interval": 1,
        "custom_hooks.2.iters": [2, 3, 4],  # NaN losses from iteration 2 (0-based): stop at 4
        "optim_wrapper.max_consecutive_nonfinite": 3,
    }
    runner = build_runner(tmp_path, **opts)
    errors: list[str] = []
    runner.logger.error = lambda msg, *a, **k: errors.append(str(msg))
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    assert (info.value.first_iteration, info.value.last_iteration) == (2, 4)
    stop = tmp_path / "iter_5.pth"
    meta = load_checkpoint_file(stop)["meta"]
    assert meta[NONFINITE_STOP_KEY] is True and meta[NONFINITE_FROM_KEY] == 2
    assert (tmp_path / POINTER_NAME).read_text().strip() == str(stop)
    # iter_2..iter_4 were saved during the NaN losses: iter_5's weights. iter_1 is the last good one.
    same = load_checkpoint_file(tmp_path / "iter_2.pth")["state_dict"]
    for k, v in load_checkpoint_file(stop)["state_dict"].items():
        assert torch.equal(v, same[k]), k
    good = str(tmp_path / "iter_1.pth")
    (message,) = [e for e in errors if "stopped on non-finite losses" in e]
    assert "they are finite" in message and f"`--resume {good}`" in message
    assert find_resumable_checkpoint(tmp_path) == good

    resumed = build_runner(
        tmp_path, resume=True, **dict(opts, **{"custom_hooks.2.iters": [], "train_cfg.max_epochs": 0.2})
    )
    resumed.train()  # resumes after iteration 1 and runs iteration 2 (of 2)
    assert resumed.iter == 2
    assert NONFINITE_STOP_KEY not in load_checkpoint_file(tmp_path / "iter_2.pth")["meta"]
    assert (tmp_path / "iter_2.pth").stat().st_mtime > stop.stat().st_mtime  # rewritten by the new run
    assert find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_2.pth")  # the new run's checkpoint
