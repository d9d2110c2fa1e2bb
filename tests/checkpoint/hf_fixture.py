"""Tiny official-layout Sa2VA folders for tests, written independently of the library's key tables.

A folder holds ``config.json`` (official ``sa2va_chat`` schema), safetensors shards + index (or one
``model.safetensors``), the family's tiny tokenizer, placeholder remote-code ``*.py`` and
``generation_config.json``. Weights are the random init of the tiny Sa2VA parts (seeded), renamed with the
official convention: drop the leading ``mllm.``, SAM2 ``gamma`` -> ``g_weight``.

Families (:data:`FAMILIES`):

* ``qwen2``: Sa2VA-1B / -4B (InternVL2.5, Qwen2.5 LLM), the tiny byte-level BPE Qwen2 tokenizer;
* ``internlm2``: Sa2VA-8B / -26B (InternVL2.5, InternLM2.5 LLM), a real sentencepiece tokenizer trained
  offline in the official folder layout (``tokenizer_class`` ``InternLM2Tokenizer`` + ``auto_map``);
* ``internvl3``: Sa2VA-InternVL3-2B / 8B / 14B (Qwen2.5 LLM). The official ``tools/convert_to_hf.py``
  builds their ``config.json`` with ``Sa2VAChatConfig.from_pretrained(<InternVL3 folder>)``, which keeps
  the InternVL3 fields: top-level ``image_fold``, ``system_message``, ``pad2square``, ``hidden_size``; an
  ``llm_config`` with ``moe_config: null`` and ``rope_scaling`` ``{"type": "dynamic", "factor": 2.0}``;
  a ``vision_config`` (InternViT-300M-448px-V2_5) carrying vision-MoE fields with ``use_moe: false``;
  ``template`` ``qwen_chat``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import save_file
from torch import nn
from xtuner.registry import BUILDER

from bench.harness.presets import load_preset
from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader
from projects.sa2va.models.internlm2_tokenizer import build_tiny_internlm2_tokenizer
from projects.sa2va.models.internvit import InternVisionConfig
from projects.sa2va.models.internvl import InternLM2InternVL, Qwen2InternVL
from projects.sa2va.models.tokenizer import build_tiny_tokenizer, load_tokenizer
from tests.tiny import TINY_MODEL_CFG

FAMILIES = {"qwen2": Qwen2InternVL, "internlm2": InternLM2InternVL, "internvl3": Qwen2InternVL}
TEMPLATES = {"qwen2": "qwen_chat", "internlm2": "internlm2_chat", "internvl3": "qwen_chat"}
TOKENIZERS = {
    "qwen2": build_tiny_tokenizer,
    "internlm2": build_tiny_internlm2_tokenizer,
    "internvl3": build_tiny_tokenizer,
}
# vision_config fields of InternVL3 (InternViT-300M-448px-V2_5) that the official code never reads.
INTERNVL3_VISION_EXTRAS = {
    "_name_or_path": "OpenGVLab/InternViT-6B-448px-V1-5",
    "auto_map": {
        "AutoConfig": "configuration_intern_vit.InternVisionConfig",
        "AutoModel": "modeling_intern_vit.InternVisionModel",
    },
    "capacity_factor": 1.2,
    "eval_capacity_factor": 1.4,
    "laux_allreduce": "all_nodes",
    "moe_coeff_ratio": 0.5,
    "moe_intermediate_size": 768,
    "moe_output_scale": 4.0,
    "noisy_gate_policy": "RSample_before",
    "num_experts": 8,
    "num_routed_experts": 4,
    "num_shared_experts": 4,
    "shared_expert_intermediate_size": 3072,
    "use_bfloat16": True,
    "use_moe": False,
    "use_residual": True,
    "use_rts": False,
    "use_weighted_residual": False,
}
REMOTE_CODE = ("configuration_sa2va_chat.py", "modeling_sa2va_chat.py")


def tiny_llm_config(family: str, vocab: int) -> dict:
    """The official ``llm_config`` of a ``family`` folder with the tiny preset's shapes and ``vocab`` rows."""
    base = dict(
        load_preset("tiny")["llm_config"], vocab_size=vocab, tie_word_embeddings=False, torch_dtype="bfloat16"
    )
    if family == "qwen2":
        base.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu")
    elif family == "internvl3":
        base.update(
            _name_or_path="./pretrained/Qwen2.5-32B-Instruct",
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            hidden_act="silu",
            moe_config=None,
            max_window_layers=70,
            rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
            sliding_window=None,
            use_sliding_window=False,
            use_bfloat16=True,
            use_cache=False,
        )
    else:
        base.update(
            architectures=["InternLM2ForCausalLM"],
            model_type="internlm2",
            auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"},
            rope_scaling={"type": "dynamic", "factor": 2.0},
            bias=False,
            attn_implementation="eager",
            hidden_act="silu",
        )
    return base


def official_key(model_key: str) -> str:
    key = model_key.removeprefix("mllm.")
    return key[: -len(".gamma")] + ".g_weight" if key.endswith(".gamma") else key


def model_cfg(folder: str | Path, family: str) -> Config:
    """The tiny model config pointed at ``folder`` (mllm from the folder, weights via HFSa2VALoader)."""
    cfg = Config.fromfile(str(TINY_MODEL_CFG))
    folder = str(folder)
    tok = dict(type=load_tokenizer, path=folder)
    cfg.model.mllm = dict(type=FAMILIES[family], path=folder, tokenizer=tok)
    cfg.model.load_weights = dict(type=HFSa2VALoader, path=folder)
    return cfg


def write_official_folder(folder: str | Path, family: str, *, seed: int = 0, shards: int = 2) -> Path:
    """Write a tiny official-layout folder; ``shards`` 1 writes a single ``model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = TOKENIZERS[family](folder)
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    vision = InternVisionConfig.from_dict(dict(tiny.tiny_vision_config)).to_dict()
    llm = tiny_llm_config(family, len(tok))
    if family == "internvl3":
        vision.update(INTERNVL3_VISION_EXTRAS)
    cfg = {
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
            "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
            "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
        },
        "model_type": "sa2va_chat",
        "template": TEMPLATES[family],
        "force_image_size": vision["image_size"],
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vision_config": vision,
        "llm_config": llm,
    }
    if family == "internvl3":
        cfg.update(image_fold=None, system_message=None, pad2square=False, hidden_size=llm["hidden_size"])
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 32}))
    for name in REMOTE_CODE:
        (folder / name).write_text(f"# placeholder for the official {name}\n")
    # The parts with random weights (no loader): reuse the tiny config with this folder's configs.
    mcfg = copy.deepcopy(Config.fromfile(str(TINY_MODEL_CFG)).model)
    mcfg.mllm = dict(type=FAMILIES[family], path=str(folder), tokenizer=tok)
    mcfg.trainable = dict(llm="frozen")
    torch.manual_seed(seed)
    model = BUILDER.build(mcfg)
    state = {official_key(k): v.detach().clone().contiguous() for k, v in nn.Module.state_dict(model).items()}
    # Distinct, non-trivial values everywhere (norm weights/biases included).
    gen = torch.Generator().manual_seed(seed + 1)
    for v in state.values():
        if v.is_floating_point():
            v.add_(0.01 * torch.randn(v.shape, generator=gen))
    keys = sorted(state)
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())}}
    index["weight_map"] = weight_map
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
