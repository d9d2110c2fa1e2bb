"""The fine-tuning leaves validate during training, on the set their ``val_ann_file`` names.

Every leaf that loads an official HF folder (``sa2va_finetune.py``, ``sa2va_8b_finetune.py`` and the two
Qwen-VL leaves) names its training and validation annotation files once (``train_ann_file``,
``val_ann_file``), gives the validation set the model's processor, validates every ``val_interval``
iterations and keeps the best checkpoint by ``val/dice_best``; ``val_ann_file = None`` trains without
validation (the config loader switches it off for a ``None`` annotation file, also from the command line).
The end-to-end run trains a copy of ``sa2va_finetune.py`` on a tiny official Qwen2 folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

from projects.sa2va.cli import parse_cfg_options
from projects.sa2va.engine.builder import load_config
from projects.sa2va.engine.config_file import PACKAGE_CONFIGS
from projects.sa2va.engine.hooks import read_loss_records
from tests.checkpoint.hf_fixture import write_official_folder
from tests.engine.test_launch import run_train
from tests.tiny import TINY_MODEL_CFG

ROOT = Path(__file__).resolve().parents[2]
LEAVES = [
    "sa2va_finetune.py",
    "sa2va_8b_finetune.py",
    "sa2va_qwen3vl_4b_finetune.py",
    "sa2va_qwen2_5vl_3b_finetune.py",
]


def _without_validation(leaf: Path, into: Path) -> Path:
    """A copy of ``leaf`` with ``val_ann_file = None``, as a user would edit it."""
    text, n = re.subn(r"(?m)^val_ann_file = .*$", "val_ann_file = None", leaf.read_text())
    assert n == 1, leaf
    into.write_text(text)
    return into


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_validates_on_its_val_ann_file(leaf, tmp_path):
    cfg = load_config(PACKAGE_CONFIGS / leaf, {"path": "/models/Sa2VA-X"})
    assert (
        cfg.train_dataloader.dataset.ann_file
        == cfg.train_ann_file
        == cfg.data_root + "/annotations_train.json"
    )
    val = cfg.val_dataloader.dataset
    assert val.ann_file == cfg.val_ann_file == cfg.data_root + "/annotations_test.json"
    assert val.image_root == cfg.train_dataloader.dataset.image_root
    # The model's processor, re-pointed with `path` like the training set's.
    assert val.processor.to_dict() == cfg.train_dataloader.dataset.processor.to_dict()
    assert val.processor.path == "/models/Sa2VA-X"
    assert val.augment is None and val.random_templates is False and val.repeats == 1
    assert cfg.train_cfg.val_interval == cfg.val_interval
    assert (cfg.default_hooks.checkpoint.save_best, cfg.default_hooks.checkpoint.rule) == (
        "val/dice_best",
        "greater",
    )
    assert cfg.val_cfg is not None and cfg.val_evaluator is not None

    plain = load_config(_without_validation(PACKAGE_CONFIGS / leaf, tmp_path / leaf))
    assert plain.val_dataloader is None and plain.val_cfg is None and plain.val_evaluator is None
    assert "val_interval" not in plain.train_cfg and "save_best" not in plain.default_hooks.checkpoint
    assert (
        plain.train_dataloader.dataset.to_dict()
        == load_config(PACKAGE_CONFIGS / leaf).train_dataloader.dataset.to_dict()
    )


def _tiny_finetune_options(folder: Path) -> list[str]:
    sam2_size = Config.fromfile(str(TINY_MODEL_CFG)).sam2_image_size
    return [
        f"path={folder}",
        f"train_dataloader.dataset.processor.sam2_size={sam2_size}",
        f"val_dataloader.dataset.processor.sam2_size={sam2_size}",
        "model.mllm.torch_dtype=float32",
        "model.feature_cache.mode=off",
        "train_dataloader.batch_size=2",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "train_dataloader.dataset.repeats=1",
        "optim_wrapper.accumulative_counts=1",
        "train_cfg.max_epochs=0.2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
    ]


def _tiny_sam2(leaf: Path) -> None:
    """The folder holds a tiny SAM2; its architecture comes from the config, as a user leaf would set it."""
    overrides = Config.fromfile(str(TINY_MODEL_CFG)).tiny_sam2_overrides.to_dict()
    leaf.write_text(leaf.read_text() + f"model.grounding_encoder.overrides = {overrides!r}\n")


@pytest.mark.slow
def test_copied_finetune_leaf_validates_and_keeps_the_best_checkpoint(tmp_path):
    folder = write_official_folder(tmp_path / "Sa2VA-tiny", "qwen2", shards=1)
    mine = tmp_path / "my_configs"
    mine.mkdir()
    shutil.copy(PACKAGE_CONFIGS / "sa2va_finetune.py", mine / "sa2va_finetune.py")
    _tiny_sam2(mine / "sa2va_finetune.py")
    work = tmp_path / "work"
    # 20 training images of the bundled sample, batch 2: 0.2 epochs = 2 iterations, then validation on its
    # 8 test images (data_root's annotations_test.json).
    proc = run_train(
        str(mine / "sa2va_finetune.py"),
        "--work-dir",
        str(work),
        "--cfg-options",
        *_tiny_finetune_options(folder),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    log = next(work.glob("*/*.log")).read_text()
    assert "SegMetric over 8 queries" in log
    assert re.search(r"Iter\(val\) \[8/8\].*val/dice_best: \d", log), log[-3000:]
    assert len(list(work.glob("best_val_dice_best_iter_2.pth"))) == 1
    # The reference schedule follows the run (2 iterations: the 5 % warm-up has no whole iteration, the
    # cosine spans both): 4e-5, then half of it.
    lrs = [r["lr"] for _, r in sorted(read_loss_records(work / "train_losses.jsonl").items())]
    assert lrs == pytest.approx([4e-5, 2e-5], rel=1e-6)

    # Without a validation set: the same training, no validation and no best checkpoint.
    plain_leaf = _without_validation(mine / "sa2va_finetune.py", mine / "no_val.py")
    proc = run_train(
        str(plain_leaf),
        "--work-dir",
        str(tmp_path / "work_plain"),
        "--cfg-options",
        *[o for o in _tiny_finetune_options(folder) if not o.startswith(("train_cfg.val_interval", "val_"))],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "SegMetric" not in next((tmp_path / "work_plain").glob("*/*.log")).read_text()
    assert (tmp_path / "work_plain" / "iter_2.pth").is_file()
    assert not list((tmp_path / "work_plain").glob("best_*.pth"))


@pytest.mark.parametrize("leaf", ["sa2va_finetune.py", "sa2va_tiny_demo.py"])
def test_a_none_val_ann_file_on_the_command_line_switches_validation_off(leaf):
    cfg = load_config(PACKAGE_CONFIGS / leaf, parse_cfg_options(["val_dataloader.dataset.ann_file=None"]))
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None
    assert "val_interval" not in cfg.train_cfg
    assert "save_best" not in cfg.default_hooks.checkpoint and "rule" not in cfg.default_hooks.checkpoint
    # A config without validation stays as it is.
    assert load_config(cfg).to_dict() == cfg.to_dict()
