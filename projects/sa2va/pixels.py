"""Pixel tensors of a batch: uint8 from the data pipeline, normalised on the device for the encoders.

Datasets may hand over uint8 pixels (4x fewer bytes than float32 through the DataLoader workers,
shared memory, pinned memory and the host-to-device copy); the model turns them into the encoders'
ImageNet-normalised float32 on its device with :func:`model_pixels`. The operations are those of the
host-side path (``x / 255``, ``- mean``, ``/ std`` in fp32), so the values are bit-identical.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "model_pixels", "normalize_pixels", "standardize"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=16)
def _channel_stats(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` / ``std`` as ``[3, 1, 1]`` float32 on ``device`` (made once per device: no copy per step)."""
    as_t = lambda v: torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device)  # noqa: E731
    return as_t(mean), as_t(std)


def standardize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of float32 ``x [..., 3, H, W]`` with values in [0, 1]."""
    m, s = _channel_stats(x.device, tuple(mean), tuple(std))
    return (x - m) / s


def normalize_pixels(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 pixels ``[..., 3, H, W]`` (any device) -> float32 ``(x / 255 - mean) / std``."""
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize_pixels expects uint8 pixels, got {x.dtype}")
    return standardize(x.float() / 255.0, mean, std)


def model_pixels(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Pixel tensor of a batch as the encoders take it: on ``device``, float, ImageNet-normalised.

    ``x`` is either uint8 pixels (``pixel_format='uint8'`` datasets; normalised here, on the device,
    with the training constants) or an already-normalised float tensor (returned moved, unchanged).
    """
    x = x.to(device, non_blocking=True)
    return normalize_pixels(x) if x.dtype == torch.uint8 else x
