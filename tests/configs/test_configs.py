"""Every config loads; every config builds its model and dataset (tiny shapes where weights are needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER

from projects.sa2va.datasets.collate import sa2va_collate
from tests.tiny import ROOT, TINY_MODEL_CFG

CONFIG_DIR = ROOT / "projects/sa2va/configs"
LEAVES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")
BASES = sorted(p for p in (CONFIG_DIR / "_base_").glob("*.py") if p.name != "__init__.py")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("path", LEAVES + BASES, ids=rel)
def test_config_loads(path):
    cfg = Config.fromfile(str(path))
    assert cfg.filename


@pytest.mark.parametrize("path", LEAVES, ids=rel)
def test_leaf_config_starts_with_its_launch_command(path):
    head = path.read_text().splitlines()[:4]
    assert any(
        ("tools/train.py" in line or "tools/dist.sh" in line) for line in head if line.startswith("#")
    ), path


def shrink_to_tiny(cfg: Config) -> None:
    """Replace real-size architecture settings by the tiny ones (no weights exist offline)."""
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    mllm = cfg.model.mllm
    mllm.update(
        vision_config=tiny.tiny_vision_config, llm_config=tiny.tiny_llm_config, tokenizer=tiny.tokenizer
    )
    mllm.pop("path", None)
    mllm.pop("torch_dtype", None)
    cfg.model.grounding_encoder.update(overrides=tiny.tiny_sam2_overrides)
    cfg.model.grounding_encoder.pop("torch_dtype", None)
    cfg.model.pop("load_weights", None)
    cfg.model.lora = tiny.model.lora
    cfg.train_dataloader.dataset.processor = tiny.processor


@pytest.mark.parametrize(
    "name", ["sa2va_tiny_demo", "sa2va_1b_random", "sa2va_tiny_qwen3vl_demo", "sa2va_tiny_qwen2_5vl_demo"]
)
def test_config_builds_and_takes_a_training_step(name):
    cfg = Config.fromfile(str(CONFIG_DIR / f"{name}.py"))
    if name == "sa2va_1b_random":
        shrink_to_tiny(cfg)
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    batch = sa2va_collate([dataset[0], dataset[1]])
    losses = model(**model.data_preprocessor(batch, True), mode="loss")
    assert set(losses) >= {"loss_lm", "loss_mask", "loss_dice"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
