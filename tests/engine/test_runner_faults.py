"""In-process Sa2VARunner runs (tiny model, CPU): atomic saves under a simulated kill, resume from the last
good checkpoint, non-finite losses (skip, then stop with a checkpoint), out-of-memory messages."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from projects.sa2va.checkpoint.safe_load import load_checkpoint_file
from projects.sa2va.engine.hooks import read_loss_records
from projects.sa2va.engine.optim import NonFiniteLossError
from projects.sa2va.engine.state import find_resumable_checkpoint

CFG = Path(__file__).parent / "configs" / "tiny_fault.py"
_names = itertools.count()


def build_runner(work_dir: Path, **options):
    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    cfg = Config.fromfile(str(CFG))
    cfg.merge_from_dict(options)
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    cfg.experiment_name = f"test_runner_faults_{next(_names)}"
    return RUNNERS.build(cfg)


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


@pytest.mark.slow
def test_kill_during_save_keeps_last_good_checkpoint_and_resume_continues(tmp_path, monkeypatch):
    from mmengine.fileio.backends.local_backend import LocalBackend

    opts = {"train_cfg.max_epochs": 0.2, "default_hooks.checkpoint.interval": 1}  # 2 iterations
    runner = build_runner(tmp_path, **opts)
    real_put = LocalBackend.put

    def put(self, obj, filepath):
        if "iter_2" in str(filepath):
            with open(filepath, "wb") as f:
                f.write(obj[: len(obj) // 2])
            raise Killed
        real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put)
    with pytest.raises(Killed):
        runner.train()
    monkeypatch.setattr(LocalBackend, "put", real_put)

    good = tmp_path / "iter_1.pth"
    assert not (tmp_path / "iter_2.pth").exists(), "a half-written checkpoint got the final name"
    assert (tmp_path / "last_checkpoint").read_text().strip() == str(good)
    assert not list(tmp_path.glob(".*partial*")), "the partial file of the failed save was left behind"
    ckpt = load_checkpoint_file(good)  # complete, and loads under weights_only=True
    assert ckpt["meta"]["iter"] == 1 and len(ckpt["meta"]["rng_states"]) == 1
    assert find_resumable_checkpoint(tmp_path) == str(good)

    first = read_loss_records(tmp_path / "train_losses.jsonl")
    resumed = build_runner(tmp_path, resume=True, **opts)
    resumed.train()
    assert resumed.iter == 2 and (tmp_path / "iter_2.pth").is_file()
    again = read_loss_records(tmp_path / "train_losses.jsonl")
    assert again[2]["loss"] == first[2]["loss"], "the resumed iteration 2 differs from the interrupted run's"


@pytest.mark.slow
def test_nonfinite_losses_skip_updates_then_stop_with_checkpoint(tmp_path):
    runner = build_runner(
        tmp_path,
        **{
            "train_cfg.max_epochs": 0.5,
            "custom_hooks.2.iters": [1, 2, 3],  # a NaN loss at iteration 1 (0-based), then 2 and 3
            "optim_wrapper.max_consecutive_nonfinite": 3,
        },
    )
    model = runner.model
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(module, args, kwargs, output):
        snapshots[runner.iter + 1] = {k: v.clone() for k, v in model.state_dict().items()}

    model.register_forward_hook(snapshot, with_kwargs=True)  # state after the previous update
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        runner.train()
    records = read_loss_records(tmp_path / "train_losses.jsonl")
    assert math.isfinite(records[1]["loss"]) and all(math.isnan(records[i]["loss"]) for i in (2, 3))
    assert 4 not in records, "the iteration that stopped training is not logged as finished"
    ckpt = load_checkpoint_file(tmp_path / "iter_4.pth")
    assert (tmp_path / "last_checkpoint").read_text().strip() == str(tmp_path / "iter_4.pth")
    after_first_update = snapshots[2]  # taken in iteration 1's forward, i.e. after iteration 0's step
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, after_first_update[k]), f"{k} changed by a skipped update"
    assert torch.equal(snapshots[3][k], after_first_update[k])
    # The stop message never advises resuming from the weights that diverged.
    saved = str(tmp_path / "iter_4.pth")
    alone = runner._nonfinite_message(saved, None)
    assert (
        "do not resume from them" in alone
        and "--resume auto" not in alone
        and "no earlier checkpoint" in alone
    )
    earlier = runner._nonfinite_message(saved, str(tmp_path / "iter_2.pth"))
    assert f"--resume {tmp_path / 'iter_2.pth'}" in earlier and "largest trained |weight|" in earlier


def test_oom_on_first_iteration_names_batch_size(tmp_path, monkeypatch):
    runner = build_runner(tmp_path, **{"train_cfg.max_epochs": 0.1})

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(runner.model, "train_step", oom)
    with pytest.raises(torch.OutOfMemoryError) as info:
        runner.train()
    msg = str(info.value)
    assert (
        "first iteration" in msg and "batch_size=2 per rank" in msg and "Tried to allocate 20.00 GiB" in msg
    )
