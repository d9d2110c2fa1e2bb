"""Model-shape presets read from the ``_base_`` model configs, which stay their one source of truth.

Code that needs a shape without building a runner (benchmarks, checkpoint tools, test fixtures) reads
it here instead of writing the ViT / LLM / SAM2 dicts out again.
"""

from __future__ import annotations

from typing import Any

from mmengine.config import Config

from projects.sa2va.configs import config_path

__all__ = ["BENCH_VOCAB_SIZE", "PRESET_CONFIGS", "SAM2_DEFAULT_IMAGE_SIZE", "load_preset"]

#: Preset name -> ``_base_`` model config it is read from.
PRESET_CONFIGS: dict[str, str] = {
    "tiny": "_base_/model_tiny",  # InternViT 2x32 at 224 px, Qwen2 2x64, SAM2 Hiera 4x16 at 256 px
    "1b": "_base_/model_sa2va_1b_random",  # InternViT-300M + Qwen2.5-0.5B + SAM2 Hiera-L
    "4b": "_base_/model_sa2va_4b_random",  # InternViT-300M + Qwen2.5-3B + SAM2 Hiera-L
}
#: SAM2 input size when a config sets no ``overrides.image_size`` (``sam2_hiera_*.yaml``).
SAM2_DEFAULT_IMAGE_SIZE = 1024
#: ``vocab_size`` the 1b / 4b benchmarks (``speed.py``, ``checkpoint_io.py``) put over the config's: the
#: value their published figures were measured with (the ``_base_`` configs keep Qwen2.5's padded 151936
#: rows).
BENCH_VOCAB_SIZE = 151674


def load_preset(name: str) -> dict[str, Any]:
    """The shapes of the model in ``PRESET_CONFIGS[name]``, as plain (fresh, mutable) dicts.

    Returns:
        ``vision_config`` / ``llm_config`` (the config's ``model.mllm`` dicts), ``sam2_overrides``
        (``model.grounding_encoder.overrides`` or ``None``), ``vit_image_size`` (InternViT tile, px),
        ``sam2_image_size`` (SAM2 input, px) and ``lora_r`` (``model.lora.r``).

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in PRESET_CONFIGS:
        raise ValueError(f"unknown model preset {name!r} (expected one of {sorted(PRESET_CONFIGS)})")
    model = Config.fromfile(str(config_path(PRESET_CONFIGS[name]))).model
    vision = model.mllm.vision_config.to_dict()
    overrides = model.grounding_encoder.get("overrides")
    overrides = overrides.to_dict() if overrides is not None else None
    return dict(
        vision_config=vision,
        llm_config=model.mllm.llm_config.to_dict(),
        sam2_overrides=overrides,
        vit_image_size=vision["image_size"],
        sam2_image_size=(overrides or {}).get("image_size", SAM2_DEFAULT_IMAGE_SIZE),
        lora_r=model.lora.r,
    )
