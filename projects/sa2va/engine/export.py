"""Config + trainable checkpoint -> an official Hugging Face folder: what ``tools/convert_to_hf.py`` runs.

In the application layer because it builds the model (:func:`~.builder.build_model`, seeded as training
seeded) before :mod:`projects.sa2va.checkpoint.hf_sa2va` writes it out.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from ..checkpoint.hf_sa2va import ExportReport, export_adapter, export_hf_folder
from ..datasets.image_processing import InternVLImageProcessor
from .builder import build_model, load_config

__all__ = ["convert_to_hf", "training_tiling"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_to_hf(
    config: str | Path | Config,
    checkpoint: str | Path | None,
    save_path: str | Path,
    *,
    adapter_only: bool = False,
    max_shard_size: int | str = "5GB",
    dtype: str | None = None,
    cfg_options: dict[str, Any] | None = None,
) -> ExportReport | list[str]:
    """Config + trainable checkpoint -> an official HF folder (LoRA merged) or an adapter folder.

    The config's model is built by :func:`projects.sa2va.engine.builder.build_model`: seeded with the
    seed the run recorded in ``checkpoint`` (else the config's ``randomness.seed``), exactly as the
    training runner seeds before it builds, so frozen parts that no file holds (random-initialised
    encoders) equal the trained model's; its ``load_weights`` reads the source HF folder; the
    trainable checkpoint is loaded strictly; then the model is exported, with the InternVL tiling the run
    trained with (:func:`training_tiling`) in its ``config.json``.
    """
    cfg = load_config(config, cfg_options)
    model = build_model(cfg, checkpoint)
    if adapter_only:
        return export_adapter(model, save_path)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return export_hf_folder(
        model,
        save_path,
        max_shard_size=max_shard_size,
        dtype=_DTYPES[dtype] if dtype else None,
        tiling=training_tiling(cfg),
    )


def training_tiling(cfg: Config) -> dict[str, Any] | None:
    """The InternVL tiling the run trained with, as ``config.json`` fields (``min_dynamic_patch``,
    ``max_dynamic_patch``, ``use_thumbnail``), read from the training set's processor config (else the
    config's ``processor``) without building it.

    An ``image_processor=dict(type=InternVLImageProcessor, ...)`` gives all three (its defaults where
    unset); ``Sa2VAProcessor.from_pretrained(path, ...)`` gives the ones it overrides (the rest are the
    source folder's, which the export keeps). ``None``: nothing to write (a Qwen-VL processor, which has
    pixel budgets instead of tiles, or no processor).
    """
    processor = ((cfg.get("train_dataloader") or {}).get("dataset") or {}).get("processor")
    processor = processor if processor is not None else cfg.get("processor")
    if not isinstance(processor, dict):
        return None
    image_processor = processor.get("image_processor")
    if isinstance(image_processor, dict):
        kind = image_processor.get("type")
        name = kind if isinstance(kind, str) else getattr(kind, "__name__", "")
        if not name.endswith("InternVLImageProcessor"):
            return None
        defaults = inspect.signature(InternVLImageProcessor.__init__).parameters
        values = {k: image_processor.get(k, defaults[k].default) for k in _TILING}
    else:
        values = {k: processor[k] for k in _TILING if processor.get(k) is not None}
    out = {field: cast(values[k]) for k, (field, cast) in _TILING.items() if k in values}
    return out or None


#: processor argument -> (config.json field, type).
_TILING = {
    "min_tiles": ("min_dynamic_patch", int),
    "max_tiles": ("max_dynamic_patch", int),
    "use_thumbnail": ("use_thumbnail", bool),
}
