"""What the toolkit hands the official Sa2VA training code (bytedance/Sa2VA) so that both run the same model.

Runs in the toolkit's environment; imports nothing from the official source. Three bridges:

* :func:`official_key` / :func:`official_state`: toolkit ``Sa2VAModel`` state-dict keys -> the official
  training ``Sa2VAModel`` keys (``projects/sa2va/models/sa2va.py`` of the official repository, whose MLLM
  is xtuner's ``InternVL_V1_5`` holding the InternVL chat model under ``mllm.model``). The table raises on a
  key it does not know.
* :func:`folder_key` / :func:`write_internvl_folder`: the InternVL folder that the official
  ``InternVL_V1_5`` loads with ``AutoModel.from_pretrained(..., trust_remote_code=True)``: base weights
  (no LoRA), ``config.json`` in the official ``sa2va_chat`` schema, the tokenizer, and the official
  remote code copied at run time from the git-ignored official checkout.
* :func:`hydra_overrides`: the toolkit's nested SAM2 overrides -> the hydra override strings that the
  official ``SAM2TrainRunner(hydra_overrides_extra=...)`` applies to the same ``sam2_hiera_l.yaml``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# Toolkit prefix -> official prefix, first match wins. The official MLLM wrapper keeps the InternVL model
# under `mllm.model`; SAM2 and the projection have the same names on both sides.
PREFIX_TABLE: tuple[tuple[str, str], ...] = (
    ("mllm.vision_model.", "mllm.model.vision_model."),
    ("mllm.mlp1.", "mllm.model.mlp1."),
    ("mllm.language_model.", "mllm.model.language_model."),
    ("grounding_encoder.sam2_model.", "grounding_encoder.sam2_model."),
    ("text_hidden_fcs.", "text_hidden_fcs."),
)
# PEFT wrapper pieces that an unwrapped (base) checkpoint does not have.
PEFT_BASE_MODEL = "base_model.model."
PEFT_BASE_PIECES = (".base_layer", ".original_module")
PEFT_ADAPTER_PIECES = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".modules_to_save.")

# The remote-code files of the official InternVL-family export (projects/sa2va/hf/models/); the folder's
# auto_map points at its Sa2VAChatModel, the InternVL chat model with Sa2VA's prediction parts added.
OFFICIAL_HF_CODE_DIR = "projects/sa2va/hf/models"
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
    "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
    "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
}
# Parts of the official Sa2VAChatModel that only its HF prediction methods use (a Hiera-L SAM2 and a
# second projection); the official training model has its own `grounding_encoder` / `text_hidden_fcs`.
HF_PREDICTION_ONLY_PREFIXES = ("grounding_encoder.", "text_hidden_fcs.")


def official_key(key: str) -> str:
    """A toolkit ``Sa2VAModel`` state-dict key -> the official training ``Sa2VAModel`` key.

    Raises:
        KeyError: ``key`` is under no prefix of :data:`PREFIX_TABLE`.
    """
    for ours, theirs in PREFIX_TABLE:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise KeyError(
        f"no official name for toolkit key {key!r} (known prefixes: {[p for p, _ in PREFIX_TABLE]})"
    )


def official_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole toolkit state dict (see :func:`official_key`); raises on duplicates."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        nk = official_key(k)
        if nk in out:
            raise KeyError(f"two toolkit keys map to {nk!r}")
        out[nk] = v
    return out


def folder_key(key: str) -> str | None:
    """A toolkit ``mllm.*`` key -> the key of the base (un-adapted) weight in an InternVL folder.

    LoRA matrices and PEFT ``modules_to_save`` copies have no place in the folder (``None``); PEFT's
    ``base_model.model.`` / ``.base_layer`` / ``.original_module`` wrappers are removed.

    Raises:
        KeyError: ``key`` is not an ``mllm.`` key.
    """
    if not key.startswith("mllm."):
        raise KeyError(f"{key!r} is not part of the MLLM (expected an 'mllm.' key)")
    if any(p in key for p in PEFT_ADAPTER_PIECES):
        return None
    key = key[len("mllm.") :]
    key = key.replace(f"language_model.{PEFT_BASE_MODEL}", "language_model.", 1)
    for piece in PEFT_BASE_PIECES:
        key = key.replace(piece, "")
    return key


def folder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base MLLM weights of a toolkit state dict under InternVL folder names (contiguous copies)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not k.startswith("mllm."):
            continue
        nk = folder_key(k)
        if nk is None:
            continue
        if nk in out:
            raise KeyError(f"two toolkit keys map to folder key {nk!r}")
        out[nk] = v.detach().clone().contiguous()
    return out


def _hydra_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, int | float | str):
        return str(v)
    raise TypeError(f"no hydra override syntax for {type(v).__name__} value {v!r}")


def hydra_overrides(overrides: Mapping[str, Any], prefix: str = "model") -> list[str]:
    """Nested overrides of a SAM2 yaml's ``model`` node -> ``['++model.a.b=value', ...]`` (leaves only).

    >>> hydra_overrides({"image_size": 256, "image_encoder": {"trunk": {"stages": [1, 1]}}})
    ['++model.image_size=256', '++model.image_encoder.trunk.stages=[1,1]']
    """
    out: list[str] = []
    for k, v in overrides.items():
        path = f"{prefix}.{k}"
        if isinstance(v, Mapping):
            out += hydra_overrides(v, path)
        else:
            out.append(f"++{path}={_hydra_value(v)}")
    return out


def internvl_folder_config(mllm: Any, template: str) -> dict[str, Any]:
    """``config.json`` of an official InternVL-family folder for the toolkit MLLM adapter ``mllm``.

    ``mllm`` is a toolkit InternVL adapter (``vision_config``, ``base_llm()``, ``downsample_ratio``). The
    official ``Sa2VAChatConfig`` replaces a vision config without ``architectures`` by its defaults, so the
    field is always written.
    """
    vision = dict(mllm.vision_config.to_dict(), architectures=["InternVisionModel"])
    llm_model = mllm.base_llm()
    llm = dict(llm_model.config.to_dict(), architectures=[type(llm_model).__name__])
    return {
        "architectures": ["Sa2VAChatModel"],
        "auto_map": OFFICIAL_AUTO_MAP,
        "model_type": "sa2va_chat",
        "template": template,
        "force_image_size": vision["image_size"],
        "downsample_ratio": mllm.downsample_ratio,
        "ps_version": "v2",
        "select_layer": -1,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "vision_config": vision,
        "llm_config": llm,
    }


def write_internvl_folder(
    folder: str | Path,
    *,
    config: dict[str, Any],
    weights: Mapping[str, torch.Tensor],
    tokenizer: Any,
    official_src: str | Path,
) -> Path:
    """Write the InternVL folder the official ``InternVL_V1_5(model_path=folder)`` loads.

    Args:
        config: from :func:`internvl_folder_config`.
        weights: from :func:`folder_state` (``vision_model.*``, ``mlp1.*``, ``language_model.*``).
        tokenizer: a transformers tokenizer with ``<IMG_CONTEXT>`` and ``[SEG]``.
        official_src: the official checkout; its ``projects/sa2va/hf/models/*.py`` become the remote code.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    code = Path(official_src) / OFFICIAL_HF_CODE_DIR
    if not (code / "modeling_sa2va_chat.py").is_file():
        raise FileNotFoundError(
            f"{code}/modeling_sa2va_chat.py not found: run bench/official/setup_official.sh"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for py in sorted(code.glob("*.py")):
        shutil.copyfile(py, folder / py.name)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(folder))
    save_file(dict(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
