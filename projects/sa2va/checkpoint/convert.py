"""Conversions behind ``tools/convert_to_hf.py`` and ``tools/convert_to_pth.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from .hf_sa2va import ExportReport, export_adapter, export_hf_folder
from .reference_pth import hf_folder_to_reference_pth

__all__ = ["build_model_from_config", "convert_to_hf", "convert_to_reference_pth"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model_from_config(config: str | Path | Config, cfg_options: dict[str, Any] | None = None) -> Any:
    """Build ``cfg.model`` (a ``Sa2VAModel``), seeded as training seeds it, without a checkpoint
    (:func:`projects.sa2va.engine.builder.build_model`)."""
    from ..engine.builder import build_model

    return build_model(config, None, cfg_options=cfg_options)


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
    trainable checkpoint is loaded strictly; then the model is exported.
    """
    from ..engine.builder import build_model

    model = build_model(config, checkpoint, cfg_options=cfg_options)
    if adapter_only:
        return export_adapter(model, save_path)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return export_hf_folder(
        model, save_path, max_shard_size=max_shard_size, dtype=_DTYPES[dtype] if dtype else None
    )


def convert_to_reference_pth(hf_dir: str | Path, out_file: str | Path) -> int:
    """Official HF folder -> reference-style full ``.pth`` (usable as ``pretrained_pth``)."""
    return hf_folder_to_reference_pth(hf_dir, out_file)
