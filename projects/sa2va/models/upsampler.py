"""A small learned upsampler for SAM2 mask logits: full-resolution masks for thin structures.

SAM2 predicts mask logits at 1/4 of its input (256x256 for 1024 px). Bilinear upsampling of those
logits cannot draw a 1-px line on a grid 2-4x finer (see ``projects/sa2va/evaluation/resolution.py``).
:class:`MaskUpsampler` refines the bilinearly upsampled logits with a residual predicted from

* the upsampled logits themselves,
* SAM2's stride-4 high-resolution features (the mask decoder's ``conv_s0`` output: the level it
  already fuses into its own upscaling path), projected and upsampled bilinearly,
* the SAM2 input image (ImageNet-normalised), resized to the output grid: the only input that
  still holds sub-stride detail.

The last convolution starts at zero, so an untrained upsampler outputs exactly the bilinear
upsample of the SAM2 logits (training starts from the reference behaviour).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskUpsampler"]


class MaskUpsampler(nn.Module):
    """Refine ``[N, h, w]`` logits to ``[N, scale*h, scale*w]``.

    Args:
        in_channels: channels of the stride-4 features (``conv_s0`` output; 32 for SAM2 Hiera-L).
            :class:`~projects.sa2va.models.sam2_grounding.SAM2GroundingEncoder` fills it in.
        hidden: channels of the refinement convolutions.
        scale: output resolution / input resolution (4: the SAM2 input size, 1024 px; 2: 512 px).
        use_image: feed the SAM2 input image (``False``: features and logits only, e.g. with a
            frozen-feature cache that holds no images).
        num_layers: 3x3 convolutions (with ReLU) before the final zero-initialised one.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden: int = 32,
        scale: int = 4,
        use_image: bool = True,
        num_layers: int = 2,
    ) -> None:
        super().__init__()
        if scale < 1 or int(scale) != scale:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.scale = int(scale)
        self.use_image = use_image
        self.feat_proj = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.image_proj = nn.Conv2d(3, hidden, kernel_size=3, padding=1) if use_image else None
        layers: list[nn.Module] = []
        ch = 1 + hidden + (hidden if use_image else 0)
        for _ in range(num_layers):
            layers += [nn.Conv2d(ch, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            ch = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(hidden, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        logits: torch.Tensor,
        features: torch.Tensor,
        obj_to_img: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Upsample and refine.

        Args:
            logits: ``[N, h, w]`` mask logits (SAM2 low-res, 1/4 of the input size).
            features: ``[B, C, h, w]`` per-image stride-4 features (same grid as ``logits``).
            obj_to_img: ``[N]`` long, the image of each mask.
            images: ``[B, 3, S, S]`` normalised SAM2 input, required when ``use_image``.

        Returns:
            ``[N, scale*h, scale*w]`` float32 logits = bilinear upsample + learned residual.
        """
        _, h, w = logits.shape
        if features.shape[-2:] != (h, w):
            raise ValueError(f"features {tuple(features.shape)} are not on the logits' {h}x{w} grid")
        size = (h * self.scale, w * self.scale)
        dtype = self.head.weight.dtype
        up = F.interpolate(logits[:, None].to(dtype), size=size, mode="bilinear", align_corners=False)
        feats = F.interpolate(
            self.feat_proj(features.to(dtype)), size=size, mode="bilinear", align_corners=False
        ).index_select(0, obj_to_img)
        parts = [up, feats]
        if self.image_proj is not None:
            if images is None:
                raise ValueError(
                    "MaskUpsampler(use_image=True) needs the SAM2 input images (g_pixel_values); "
                    "set use_image=False to run from cached features alone"
                )
            img = images.to(dtype)
            if tuple(img.shape[-2:]) != size:
                antialias = img.shape[-1] > size[1]
                img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=antialias)
            parts.append(self.image_proj(img).index_select(0, obj_to_img))
        delta = self.head(self.body(torch.cat(parts, dim=1)))
        return (up + delta)[:, 0].float()
