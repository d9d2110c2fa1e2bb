"""xtuner's --deepspeed path through tools/dist.sh on CPU: 2 gloo ranks, DeepSpeed ZeRO stage 0 (ZeRO-2/3
partitioning needs NCCL: DeepSpeed's all-gather of the partitions fails on gloo). Sa2VAFlexibleRunner logs
once, writes the trainable tensors in the toolkit's weights-only format next to each DeepSpeed checkpoint,
and --resume auto continues from the DeepSpeed checkpoint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from projects.sa2va.checkpoint.safe_load import load_checkpoint_file, trainable_file_name
from projects.sa2va.checkpoint.trainable_pth import load_trainable_checkpoint
from tests.procs import free_port
from tests.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
CFG = "tests/engine/configs/tiny_fault.py"
DS_CFG = "tests/engine/configs/ds_cpu_zero0.json"


def dist_train(work_dir: Path, *args: str) -> str:
    cmd = ["bash", "tools/dist.sh", "train", CFG, "2", "--work-dir", str(work_dir), "--deepspeed", DS_CFG]
    cmd += args
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_trainable_file_name():
    assert trainable_file_name("iter_8.pth") == "iter_8_trainable.pth"


@pytest.mark.slow
def test_deepspeed_train_logs_once_writes_weights_and_resumes(tmp_path):
    out = dist_train(tmp_path, "--cfg-options", "train_cfg.max_epochs=0.4")
    assert out.count("global batch = 2 per rank x 1 accumulation x 2 ranks = 4") == 1
    assert out.count("Iter(train) [1/2]") == 1 and out.count("Iter(train) [2/2]") == 1
    assert (tmp_path / "iter_2.pth").is_dir(), "DeepSpeed writes a checkpoint directory"
    ckpt = load_checkpoint_file(tmp_path / "iter_2_trainable.pth")  # weights_only=True
    state = ckpt["state_dict"]
    assert ckpt["meta"]["iter"] == 2
    # Exactly the model's trainable tensors, equal to what DeepSpeed saved (our own file: full unpickling).
    model, _ = build_tiny_model()
    assert set(state) == set(model.state_dict())
    load_trainable_checkpoint(model, tmp_path / "iter_2_trainable.pth")  # strict
    with pytest.raises(ValueError, match=r"iter_2_trainable\.pth"):  # the DeepSpeed dir names the file to use
        load_trainable_checkpoint(model, tmp_path / "iter_2.pth")
    ds = torch.load(tmp_path / "iter_2.pth" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    for k, v in state.items():
        assert torch.equal(v, ds[k].cpu()), k

    out = dist_train(tmp_path, "--resume", "auto", "--cfg-options", "train_cfg.max_epochs=0.8")
    assert "Auto resumed from the latest checkpoint" in out and "resumed epoch: 0, iter: 2" in out
    assert out.count("Iter(train) [3/4]") == 1 and "Iter(train) [1/4]" not in out
    later = load_checkpoint_file(tmp_path / "iter_4_trainable.pth")["state_dict"]
    assert any(not torch.equal(state[k], later[k]) for k in state), "the resumed training changed nothing"
