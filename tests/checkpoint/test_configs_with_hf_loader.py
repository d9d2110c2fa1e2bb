"""Every config that loads an official HF folder builds when pointed at a tiny folder of that layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader
from projects.sa2va.models.internvl import InternLM2InternVL
from tests.checkpoint.hf_fixture import write_official_folder
from tests.tiny import TINY_MODEL_CFG

CONFIG_DIR = Path(__file__).resolve().parents[2] / "projects/sa2va/configs"
LEAVES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")


def _uses_hf_loader(cfg: Config) -> bool:
    lw = cfg.get("model", {}).get("load_weights")
    return isinstance(lw, dict) and lw.get("type") is HFSa2VALoader


HF_LEAVES = [p for p in LEAVES if _uses_hf_loader(Config.fromfile(str(p)))]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cfg_hf")
    return {f: write_official_folder(root / f, f, shards=1) for f in ("qwen2", "internlm2")}


def test_the_finetune_leaf_exists_and_uses_the_loader():
    assert _uses_hf_loader(Config.fromfile(str(CONFIG_DIR / "sa2va_finetune.py")))


@pytest.mark.parametrize("leaf", HF_LEAVES, ids=lambda p: p.name)
def test_hf_config_builds_on_a_tiny_folder(leaf, tiny_folders):
    cfg = Config.fromfile(str(leaf))
    family = "internlm2" if cfg.model.mllm.type is InternLM2InternVL else "qwen2"
    folder = str(tiny_folders[family])
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    cfg.merge_from_dict(
        {
            "model.mllm.path": folder,
            "model.mllm.tokenizer.pretrained_model_name_or_path": folder,
            "model.load_weights.path": folder,
            # The folder holds a tiny SAM2; the architecture comes from the config.
            "model.grounding_encoder.overrides": tiny.tiny_sam2_overrides,
        }
    )
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    assert model.mllm.path == folder
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
