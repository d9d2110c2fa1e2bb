"""Config + trainable checkpoint -> an official Hugging Face folder: what ``tools/convert_to_hf.py`` runs.

In the application layer because it builds the model (:func:`~.builder.build_model`, seeded as training
seeded) before :mod:`projects.sa2va.checkpoint.hf_sa2va` writes it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from ..checkpoint.hf_sa2va import ExportReport, export_adapter, export_hf_folder
from .builder import build_model

__all__ = ["convert_to_hf"]

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
    trainable checkpoint is loaded strictly; then the model is exported.
    """
    model = build_model(config, checkpoint, cfg_options=cfg_options)
    if adapter_only:
        return export_adapter(model, save_path)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return export_hf_folder(
        model, save_path, max_shard_size=max_shard_size, dtype=_DTYPES[dtype] if dtype else None
    )
