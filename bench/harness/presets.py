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
    # Qwen3-VL-4B vision tower (24x1024, DeepStack) + Qwen3-4B text decoder + SAM2 Hiera-L
    "qwen3vl4b": "_base_/model_sa2va_qwen3vl_4b_random",
    "tinyqwen3vl": "_base_/model_tiny_qwen3vl",  # Qwen3-VL vision 2x32 + text 3x64, SAM2 Hiera 4x16
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
        ``mllm_type`` (the class of the config's ``model.mllm``), ``vision_config`` / ``llm_config`` (the
        config's ``model.mllm`` dicts; for a Qwen-VL adapter, built from one ``config``, its
        ``vision_config`` / ``text_config``), ``sam2_overrides`` (``model.grounding_encoder.overrides`` or
        ``None``), ``vit_image_size`` (InternViT tile, px; ``None`` for Qwen-VL, whose image size comes from
        the processor's pixel budget), ``sam2_image_size`` (SAM2 input, px), ``lora_r`` (``model.lora.r``),
        ``trainable`` (``model.trainable`` or ``None``) and ``image_processor`` (the config's
        ``processor.image_processor`` dict, ``type`` included).

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in PRESET_CONFIGS:
        raise ValueError(f"unknown model preset {name!r} (expected one of {sorted(PRESET_CONFIGS)})")
    cfg = Config.fromfile(str(config_path(PRESET_CONFIGS[name])))
    model = cfg.model
    mllm = model.mllm
    if "config" in mllm:  # the Qwen-VL adapters take one Qwen-VL config (text_config + vision_config)
        vision, llm, vit_size = mllm.config.vision_config.to_dict(), mllm.config.text_config.to_dict(), None
    else:
        vision, llm = mllm.vision_config.to_dict(), mllm.llm_config.to_dict()
        vit_size = vision["image_size"]
    overrides = model.grounding_encoder.get("overrides")
    overrides = overrides.to_dict() if overrides is not None else None
    trainable = model.get("trainable")
    return dict(
        mllm_type=mllm.type,
        vision_config=vision,
        llm_config=llm,
        sam2_overrides=overrides,
        vit_image_size=vit_size,
        sam2_image_size=(overrides or {}).get("image_size", SAM2_DEFAULT_IMAGE_SIZE),
        lora_r=model.lora.r,
        trainable=trainable.to_dict() if trainable is not None else None,
        image_processor=cfg.processor.image_processor.to_dict(),
    )
