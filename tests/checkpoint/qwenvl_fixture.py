"""Tiny official-layout Sa2VA Qwen-VL folders for tests, written independently of the library's key tables.

What the official ``tools/convert_to_hf.py`` writes for Sa2VA-Qwen2_5-VL-3B/7B and Sa2VA-Qwen3-VL-2B/4B
(the wrapper ``Sa2VAChatModelQwen`` holds transformers' ``*ForConditionalGeneration`` as ``self.model``):

* weights: transformers' own ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
  ``state_dict()`` with every key prefixed by ``model.`` (so ``model.model.visual.*``,
  ``model.model.language_model.*``, ``model.lm_head.weight``), the full SAM2 under
  ``grounding_encoder.sam2_model.*`` (layer scale ``gamma`` stored as ``g_weight``) and
  ``text_hidden_fcs.{0,2}.{weight,bias}``; safetensors shards + ``model.safetensors.index.json``;
* ``config.json``: the Qwen-VL config itself (``text_config``, ``vision_config`` and the vision token ids
  at the top level) with ``model_type`` ``sa2va_chat``, ``architectures`` ``["Sa2VAChatModelQwen"]``,
  the ``auto_map`` of the remote code, ``template`` ``qwen_chat``, ``text_config.vocab_size`` =
  ``len(tokenizer)`` and untied embeddings;
* the tokenizer files (a ``Qwen2TokenizerFast`` in the Qwen-VL layout), ``preprocessor_config.json``
  (transformers' ``Qwen2VLImageProcessorFast``) and the remote-code ``*.py`` (placeholders here).

The model shapes are those of the tiny random configs ``_base_/model_tiny_qwen3vl.py`` /
``_base_/model_tiny_qwen2_5vl.py``; the weights are transformers' random init (seeded) plus noise, so every
tensor (norms included) is distinct.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorFast,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from xtuner.registry import BUILDER

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader
from projects.sa2va.configs import config_path
from projects.sa2va.datasets.qwenvl_processing import QwenVLImageProcessor
from projects.sa2va.models.qwenvl import Qwen2_5_VLSa2VA, Qwen3VLSa2VA
from projects.sa2va.models.qwenvl_tokenizer import build_tiny_qwenvl_tokenizer
from projects.sa2va.models.tokenizer import load_tokenizer

FAMILIES = ("qwen3_vl", "qwen2_5_vl")
#: family -> (adapter class, transformers config class, transformers model class, tiny config, its field).
SPECS: dict[str, tuple[type, type[PretrainedConfig], type[PreTrainedModel], str, str]] = {
    "qwen3_vl": (
        Qwen3VLSa2VA,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        "_base_/model_tiny_qwen3vl",
        "tiny_qwen3vl_config",
    ),
    "qwen2_5_vl": (
        Qwen2_5_VLSa2VA,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        "_base_/model_tiny_qwen2_5vl",
        "tiny_qwen2_5vl_config",
    ),
}
REMOTE_CODE = ("configuration_sa2va_chat.py", "modeling_sa2va_qwen.py")
AUTO_MAP = {
    "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
    "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
    "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
}
#: The base models' ``preprocessor_config.json`` mean / std (Qwen3-VL: 0.5; Qwen2.5-VL: CLIP's).
IMAGE_NORM = {
    "qwen3_vl": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "qwen2_5_vl": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def tiny_cfg(family: str) -> Config:
    """The family's tiny random-model config (``_base_/model_tiny_qwen*vl.py``)."""
    return Config.fromfile(str(config_path(SPECS[family][3])))


def hf_config(family: str, tokenizer) -> PretrainedConfig:
    """The transformers Qwen-VL config at the tiny sizes, vision ids and vocabulary from ``tokenizer``."""
    _, config_cls, _, _, field = SPECS[family]
    tiny = tiny_cfg(family)[field]
    ids = {f: tokenizer.convert_tokens_to_ids(t) for f, t in VISION_TOKENS.items()}
    text = dict(tiny["text_config"], vocab_size=len(tokenizer), tie_word_embeddings=False)
    return config_cls(
        text_config=text, vision_config=dict(tiny["vision_config"]), tie_word_embeddings=False, **ids
    )


def processor_kwargs(family: str) -> dict:
    """The tiny pixel budget of the family's tiny config (the folder's processor keeps patch / mean / std)."""
    ip = tiny_cfg(family).image_processor
    return dict(min_pixels=ip["min_pixels"], max_pixels=ip["max_pixels"])


def model_cfg(folder: str | Path, family: str) -> Config:
    """The tiny model config pointed at ``folder``: mllm, tokenizer and image processor from the folder,
    weights via :class:`HFSa2VALoader`."""
    cfg = tiny_cfg(family)
    folder = str(folder)
    tok = dict(type=load_tokenizer, path=folder)
    cfg.model.mllm = dict(type=SPECS[family][0], path=folder, tokenizer=tok)
    cfg.model.load_weights = dict(type=HFSa2VALoader, path=folder)
    cfg.image_processor = dict(type=QwenVLImageProcessor, path=folder, **processor_kwargs(family))
    cfg.tokenizer = tok
    cfg.processor.tokenizer = tok
    cfg.processor.image_processor = cfg.image_processor
    cfg.dataset_inputs = dict(processor=cfg.processor)
    return cfg


def folder_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def transformers_model(folder: str | Path, family: str) -> PreTrainedModel:
    """transformers' own model with the folder's ``model.*`` weights (the official wrapper's ``self.model``),
    loaded strictly without the library's key tables."""
    _, config_cls, model_cls, _, _ = SPECS[family]
    raw = json.loads((Path(folder) / "config.json").read_text())
    drop = ("architectures", "auto_map", "model_type", "template", "transformers_version", "_name_or_path")
    config = config_cls(**{k: v for k, v in raw.items() if k not in drop})
    model = model_cls._from_config(config, dtype=torch.float32).eval()
    state = {k[len("model.") :]: v for k, v in folder_tensors(folder).items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model


def _grounding_tensors(family: str, hidden: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The tiny SAM2 (official names: ``gamma`` -> ``g_weight``) and ``text_hidden_fcs`` tensors."""
    sam2 = BUILDER.build(tiny_cfg(family).model.grounding_encoder)
    out = {}
    for key, value in sam2.state_dict().items():
        if not key.startswith("sam2_model."):
            raise AssertionError(f"unexpected grounding-encoder key {key}")
        if key.endswith(".gamma"):
            key = key[: -len(".gamma")] + ".g_weight"
        out[f"grounding_encoder.{key}"] = value.detach().clone()
    dim = int(sam2.hidden_dim)
    shapes = {"0.weight": (hidden, hidden), "0.bias": (hidden,), "2.weight": (dim, hidden), "2.bias": (dim,)}
    for name, shape in shapes.items():
        out[f"text_hidden_fcs.{name}"] = 0.05 * torch.randn(shape, generator=gen)
    return out


def write_official_folder(folder: str | Path, family: str, *, seed: int = 0, shards: int = 3) -> Path:
    """Write a tiny official-layout Sa2VA Qwen-VL folder of ``family`` (``qwen3_vl`` / ``qwen2_5_vl``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_qwenvl_tokenizer(folder)
    config = hf_config(family, tok)
    torch.manual_seed(seed)
    hf_model = SPECS[family][2]._from_config(config, dtype=torch.float32)
    state = {f"model.{k}": v.detach().clone() for k, v in hf_model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    state.update(_grounding_tensors(family, config.text_config.hidden_size, gen))
    for v in state.values():  # distinct, non-trivial values everywhere (norm weights / biases included)
        if v.is_floating_point():
            v.add_(0.01 * torch.randn(v.shape, generator=gen))
    state = {k: v.contiguous() for k, v in state.items()}

    cfg = config.to_diff_dict()
    cfg.update(
        architectures=["Sa2VAChatModelQwen"],
        auto_map=AUTO_MAP,
        model_type="sa2va_chat",
        template="qwen_chat",
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    cfg["text_config"]["vocab_size"] = len(tok)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    vision = config.vision_config
    mean, std = IMAGE_NORM[family]
    Qwen2VLImageProcessorFast(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        image_mean=list(mean),
        image_std=list(std),
    ).save_pretrained(str(folder))
    for name in REMOTE_CODE:
        (folder / name).write_text(f"# placeholder for the official {name}\n")

    keys = sorted(state)
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
