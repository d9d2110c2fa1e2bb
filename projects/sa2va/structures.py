"""The typed batch that flows from the collate function through the data preprocessor to the model."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class Sa2VABatch:
    """One training/validation batch of ``B`` samples (one image each).

    Attributes:
        input_ids: ``[B, L]`` long, right-padded token ids (image tokens spliced in as
            ``<img><IMG_CONTEXT>*(256*tiles)</img>``).
        attention_mask: ``[B, L]`` long, 1 for real tokens.
        labels: ``[B, L]`` long, ``-100`` everywhere except the assistant answers and their end token.
        pixel_values: the vision inputs of all samples, in sample order. InternVL: ``[T, 3, S, S]``
            tiles (``S`` = 448 for the released models), uint8 pixels (normalised on the device by
            :func:`~projects.sa2va.pixels.model_pixels` in the encoders) or float32, ImageNet-normalised.
            Qwen-VL: ``[P, C*t*p*p]`` float32 normalised patches (the Qwen-VL image processor's rows).
        num_tiles: ``[B]`` rows of ``pixel_values`` per sample (InternVL tiles, Qwen-VL patches).
        image_grid_thw: Qwen-VL only: ``[B, 3]`` long ``(t, h, w)`` patch grid of each sample's image
            (``num_tiles[i] == t * h * w``); ``None`` for InternVL.
        g_pixel_values: ``[B, 3, G, G]`` SAM2 input (``G`` = 1024): uint8 pixels or float32,
            ImageNet-normalised (as ``pixel_values``).
        masks: per sample ``[n_i, H_i, W_i]`` uint8 ground-truth masks at the original image size,
            one per ``[SEG]`` token of that sample, in order.
        image_ids: per sample an identifier (the image path relative to the data root).
        texts: per sample the referring expression of each mask.
        vit_tokens: optional cached InternViT output ``[T, N, C_vit]`` (frozen-feature cache).
        sam2_fpn: optional cached SAM2 image-encoder levels, each ``[B, C, h_l, w_l]``.
        input_digests: optional per sample ``(digest of its InternViT tiles or None, digest of its
            SAM2 input)``, the frozen-feature cache keys (``sa2va_collate(..., digests=True)``).
        seg_counts: optional per sample number of ``[SEG]`` tokens, set by the data preprocessor after
            it checked the ``[SEG]`` counts against ``masks`` and the ``<IMG_CONTEXT>`` counts against
            ``num_tiles`` on the host (lets the model skip those checks, which are device syncs).
        lm_positions: optional ``[N]`` long: the flat positions (into ``[B * L]``, row-major) of the tokens
            whose NEXT token is labelled (``labels[b, t + 1] != -100`` -> ``b * L + t``), set by the data
            preprocessor from the host labels (the model gathers them without a device sync).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    num_tiles: list[int]
    g_pixel_values: torch.Tensor | None
    masks: list[torch.Tensor]
    image_ids: list[str] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    vit_tokens: torch.Tensor | None = None
    sam2_fpn: list[torch.Tensor] | None = None
    input_digests: list[tuple[str | None, str]] | None = None
    seg_counts: list[int] | None = None
    image_grid_thw: torch.Tensor | None = None
    lm_positions: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(
        self, device: torch.device | str, non_blocking: bool = False, keep_on_host: tuple[str, ...] = ()
    ) -> Sa2VABatch:
        """A copy with every tensor moved to ``device`` (fields named in ``keep_on_host`` stay)."""

        def move(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.to(device, non_blocking=non_blocking)
            if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                return [t.to(device, non_blocking=non_blocking) for t in v]
            return v

        return replace(
            self, **{f.name: move(getattr(self, f.name)) for f in fields(self) if f.name not in keep_on_host}
        )

    def pin_memory(self) -> Sa2VABatch:
        """Pinned copy (called by the DataLoader when ``pin_memory=True``)."""

        def pin(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.pin_memory()
            if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                return [t.pin_memory() for t in v]
            return v

        return replace(self, **{f.name: pin(getattr(self, f.name)) for f in fields(self)})
