"""Every config that loads an official HF folder builds on a tiny folder of each family it serves.

``sa2va_finetune.py`` (Qwen2 adapter) serves Sa2VA-1B/4B and Sa2VA-InternVL3-2B/8B/14B with only ``path``
changed; ``sa2va_8b_finetune.py`` (InternLM2 adapter) serves Sa2VA-8B/26B.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader
from projects.sa2va.engine.builder import construct_model, load_config
from projects.sa2va.models.internvl import InternLM2InternVL
from projects.sa2va.models.qwenvl import QwenVLMLLM
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
    return {f: write_official_folder(root / f, f, shards=1) for f in ("qwen2", "internlm2", "internvl3")}


def test_the_finetune_leaves_exist_and_use_the_loader():
    for name in ("sa2va_finetune.py", "sa2va_8b_finetune.py"):
        assert _uses_hf_loader(Config.fromfile(str(CONFIG_DIR / name))), name


def _family_cases() -> list[tuple[Path, str]]:
    """InternVL leaves x the families they serve (Qwen-VL leaves: test_qwenvl_families.py)."""
    cases = []
    for leaf in HF_LEAVES:
        if issubclass(Config.fromfile(str(leaf)).model.mllm.type, QwenVLMLLM):
            continue
        internlm2 = Config.fromfile(str(leaf)).model.mllm.type is InternLM2InternVL
        cases += [(leaf, f) for f in (("internlm2",) if internlm2 else ("qwen2", "internvl3"))]
    return cases


@pytest.mark.parametrize(("leaf", "family"), _family_cases(), ids=lambda x: getattr(x, "name", x))
def test_hf_config_builds_on_a_tiny_folder(leaf, family, tiny_folders):
    folder = str(tiny_folders[family])
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    # What a user edits: `path` alone (the loader writes it into tokenizer, mllm, load_weights, processor).
    cfg = load_config(leaf)
    assert cfg.model.mllm.path == cfg.model.load_weights.path == cfg.model.mllm.tokenizer.path == cfg.path
    assert cfg.train_dataloader.dataset.processor.path == cfg.processor.path == cfg.path
    # The folder holds a tiny SAM2; the architecture comes from the config.
    cfg = load_config(leaf, {"path": folder, "model.grounding_encoder.overrides": tiny.tiny_sam2_overrides})
    assert cfg.model.mllm.path == cfg.model.load_weights.path == cfg.model.mllm.tokenizer.path == folder
    assert cfg.train_dataloader.dataset.processor.path == folder
    torch.manual_seed(0)
    model = construct_model(cfg.model)  # as the runners build it (`pretrained_pth` is the builder's)
    assert model.mllm.path == folder
    # The leaf's training template is the folder's (config.json `template`), through its processor too.
    assert dict(PROMPT_TEMPLATE[model.mllm.template]) == cfg.template.to_dict()
    processor = BUILDER.build(cfg.train_dataloader.dataset.processor)
    assert processor.template == cfg.template.to_dict()
    assert processor.num_image_token == model.mllm.num_image_token
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
