"""Collate :class:`RefSegDataset` items into a :class:`~projects.sa2va.structures.Sa2VABatch`."""

from __future__ import annotations

from typing import Any

import torch

from ..digests import sample_digests
from ..structures import Sa2VABatch


def sa2va_collate(samples: list[dict[str, Any]], digests: bool = False) -> dict[str, Any]:
    """Right-pad token sequences and concatenate image tensors.

    Args:
        samples: items of :class:`RefSegDataset` (``input_ids [L_i]``, ``labels [L_i]``,
            ``pixel_values [T_i, 3, S, S]`` or Qwen-VL ``[P_i, D]`` with ``image_grid_thw [1, 3]``,
            ``g_pixel_values [3, G, G]``, ``masks [n_i, H_i, W_i]``).
        digests: also hash each sample's pixel tensors (``Sa2VABatch.input_digests``, the keys of the
            frozen-feature cache) here, i.e. in the DataLoader workers.

    Returns:
        ``{'data': Sa2VABatch, 'data_samples': None}`` (the mmengine model-input convention).
    """
    if not samples:
        raise ValueError("empty batch")
    pad_ids = {s["pad_token_id"] for s in samples}
    if len(pad_ids) != 1:
        raise ValueError(f"samples disagree on pad_token_id: {sorted(pad_ids)}")
    pad_id = pad_ids.pop()
    length = max(s["input_ids"].shape[0] for s in samples)
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), -100, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = s["input_ids"].shape[0]
        input_ids[i, :n] = s["input_ids"]
        labels[i, :n] = s["labels"]
        attention_mask[i, :n] = 1
    has_pix = [s.get("pixel_values") is not None for s in samples]
    if any(has_pix) and not all(has_pix):
        raise ValueError("either every sample of a batch has an image or none has")
    has_grid = [s.get("image_grid_thw") is not None for s in samples]
    if any(has_grid) and not all(has_grid):
        raise ValueError("either every sample of a batch has an image_grid_thw (Qwen-VL) or none has")
    grid = torch.cat([s["image_grid_thw"] for s in samples]) if all(has_grid) and samples else None
    batch = Sa2VABatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        pixel_values=torch.cat([s["pixel_values"] for s in samples]) if all(has_pix) else None,
        num_tiles=[
            int(s["pixel_values"].shape[0]) if s.get("pixel_values") is not None else 0 for s in samples
        ],
        g_pixel_values=torch.stack([s["g_pixel_values"] for s in samples]),
        masks=[s["masks"] for s in samples],
        image_ids=[s.get("image_id", str(i)) for i, s in enumerate(samples)],
        texts=[list(s.get("texts", [])) for s in samples],
        image_grid_thw=grid,
    )
    if digests:
        batch.input_digests = sample_digests(
            batch.pixel_values, batch.num_tiles, batch.g_pixel_values, batch.image_grid_thw
        )
    return {"data": batch, "data_samples": None}
