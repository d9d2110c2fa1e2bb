"""SHA-256 digests of input tensors: the per-sample keys of the frozen-feature cache.

Kept at the bottom layer (no project imports) because two layers compute them: the collate function
(``sa2va_collate(..., digests=True)``, in the DataLoader workers) and the model's frozen-feature cache
(:mod:`projects.sa2va.models.feature_cache`, for a batch that comes without them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

__all__ = ["sample_digests", "tensor_digest"]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and bytes (moved to the host if needed)."""
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    data = t.detach().contiguous().reshape(-1)
    if data.device.type != "cpu":
        data = data.cpu()
    if data.numel():
        h.update(memoryview(data.view(torch.uint8).numpy()))
    return h.hexdigest()


def sample_digests(
    pixel_values: torch.Tensor | None,
    num_tiles: Sequence[int],
    g_pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
) -> list[tuple[str | None, str]]:
    """Per sample ``(digest of its vision input or None, digest of its SAM2 input)``.

    Args:
        pixel_values: ``[T, 3, S, S]`` tiles (or Qwen-VL ``[P, D]`` patches) of all samples (``None`` for
            text-only batches).
        num_tiles: ``[B]`` rows of ``pixel_values`` per sample.
        g_pixel_values: ``[B, 3, G, G]``.
        image_grid_thw: Qwen-VL ``[B, 3]`` patch grids, hashed with the patches (the same patch rows
            under another grid are another input).
    """
    out: list[tuple[str | None, str]] = []
    start = 0
    for i, n in enumerate(num_tiles):
        vit = None
        if pixel_values is not None and n > 0:
            vit = tensor_digest(pixel_values[start : start + n])
            if image_grid_thw is not None:
                vit = hashlib.sha256(f"{vit}|{image_grid_thw[i].tolist()}".encode()).hexdigest()
        start += n
        out.append((vit, tensor_digest(g_pixel_values[i])))
    return out
