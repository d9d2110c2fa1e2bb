"""Qwen-VL image inputs for Sa2VA: transformers' Qwen2-VL image processor at Sa2VA's pixel budget.

The Qwen2.5-VL and Qwen3-VL families take an image as a grid of ``p x p`` patches (``p`` = 14 / 16), resized
by ``smart_resize`` so that each side is a multiple of ``p * merge_size`` and the area lies within
``[min_pixels, max_pixels]``; every ``merge_size x merge_size`` patches become one LLM token. Sa2VA trains
and predicts both families with ``min_pixels = 512*28*28`` and ``max_pixels = 2048*28*28`` (the official
training datasets and ``predict_forward``). The image is processed by transformers'
``Qwen2VLImageProcessorFast`` built from the folder's ``preprocessor_config.json`` (patch size, mean / std,
resample), as the official training does; the text side is
``<|vision_start|>`` + ``<|image_pad|>`` * tokens + ``<|vision_end|>`` in place of ``<image>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorFast
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from .image_processing import VisionInputs

__all__ = ["SA2VA_MAX_PIXELS", "SA2VA_MIN_PIXELS", "QwenVLImageProcessor"]

SA2VA_MIN_PIXELS = 512 * 28 * 28
SA2VA_MAX_PIXELS = 2048 * 28 * 28


class QwenVLImageProcessor:
    """Image -> Qwen-VL patches and grid, plus the token count of an image size without decoding it.

    Args:
        path: a Sa2VA Qwen-VL folder whose ``preprocessor_config.json`` configures the processor; or
            ``None`` with the explicit settings below (tests, random-weight configs).
        patch_size / merge_size / temporal_patch_size / image_mean / image_std: processor settings
            used when ``path`` is ``None`` (Qwen2.5-VL: 14 and CLIP mean/std; Qwen3-VL: 16 and 0.5).
        min_pixels / max_pixels: the pixel budget of :func:`smart_resize` (Sa2VA's by default).

    Attributes:
        image_tokens: ``(start, slot, end)`` token strings that stand for an image in the text.
        num_image_token: image-slot tokens per "tile" (1: the slots are counted directly).
        internvl_tokens: whether the tokenizer needs the InternVL tokens (no: the family has its own).
    """

    image_tokens: ClassVar[tuple[str, str, str]] = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    num_image_token: ClassVar[int] = 1
    internvl_tokens: ClassVar[bool] = False

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        patch_size: int = 14,
        merge_size: int = 2,
        temporal_patch_size: int = 2,
        image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
        image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
        min_pixels: int = SA2VA_MIN_PIXELS,
        max_pixels: int = SA2VA_MAX_PIXELS,
    ) -> None:
        if min_pixels < 1 or max_pixels < min_pixels:
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if path is not None:
            cfg_file = Path(path) / "preprocessor_config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{cfg_file} not found: a Qwen-VL folder holds the image processor")
            self.hf = Qwen2VLImageProcessorFast.from_pretrained(str(path))
        else:
            self.hf = Qwen2VLImageProcessorFast(
                patch_size=patch_size,
                merge_size=merge_size,
                temporal_patch_size=temporal_patch_size,
                image_mean=list(image_mean),
                image_std=list(image_std),
            )
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)

    @property
    def patch_size(self) -> int:
        return int(self.hf.patch_size)

    @property
    def merge_size(self) -> int:
        return int(self.hf.merge_size)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of one RGB image.

        Returns:
            ``(pixel_values [P, 3*t*p*p] float32, image_grid_thw [1, 3] long)``, ``P = t*h*w``.
        """
        out = self.hf(
            images=[image], min_pixels=self.min_pixels, max_pixels=self.max_pixels, return_tensors="pt"
        )
        return out["pixel_values"].float(), out["image_grid_thw"].long()

    def preprocess(self, image: Image.Image, *, normalize: bool = True) -> VisionInputs:
        """Patches ``[P, D]`` float32, grid ``[1, 3]`` and ``<|image_pad|>`` count of one RGB image.

        The Hugging Face processor always rescales and normalises, so ``normalize`` has no effect here
        (there is no uint8 form of the patches)."""
        pixel_values, grid = self(image)
        return VisionInputs(
            pixel_values=pixel_values, image_grid_thw=grid, slots=int(grid.prod()) // self.merge_size**2
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(patch_size={self.patch_size}, merge_size={self.merge_size}, "
            f"min_pixels={self.min_pixels}, max_pixels={self.max_pixels})"
        )

    def num_slots(self, width: int, height: int) -> int:
        """``<|image_pad|>`` tokens of a ``width x height`` image (:meth:`num_tokens`)."""
        return self.num_tokens(width, height)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(h, w)`` patch grid of a ``width x height`` image (no decoding)."""
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(
            height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return h // self.patch_size, w // self.patch_size

    def num_tokens(self, width: int, height: int) -> int:
        """LLM image tokens of a ``width x height`` image (``h * w / merge_size**2``)."""
        gh, gw = self.grid(width, height)
        return gh * gw // self.merge_size**2
