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
    """Build ``cfg.model`` (a ``Sa2VAModel``) from a config file, with ``--cfg-options``-style overrides."""
    from xtuner.registry import BUILDER

    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = BUILDER.build(cfg.model)
    model.eval()
    return model


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

    The config's model is built (its ``load_weights`` reads the source HF folder), the trainable
    checkpoint is loaded strictly (``Sa2VAModel.load_trainable_checkpoint``), then exported.
    """
    model = build_model_from_config(config, cfg_options)
    if checkpoint is not None:
        model.load_trainable_checkpoint(str(checkpoint))
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
