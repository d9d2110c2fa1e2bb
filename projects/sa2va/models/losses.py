"""Mask losses of the Sa2VA recipe: sigmoid BCE + naive Dice, optionally on sampled points.

Both losses take logits and binary targets of the same shape ``[N, H, W]`` (or ``[N, P]`` points).
:class:`MaskLoss` decides at which resolution they are compared:

* ``resolution='low'`` (the reference): targets are nearest-resized to the logits' size (256x256
  for a 1024 SAM2 input);
* ``resolution='full'``: logits are bilinearly upsampled to each ground-truth mask's own size, so
  thin structures (1-3 px vessels) are supervised at full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sam2_grounding import upsample_logits


def per_mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the elements (pixels or points) of each mask.

    Args:
        logits: ``[N, ...]`` float logits.
        targets: same shape, values in ``{0, 1}`` (or soft in ``[0, 1]``).

    Returns:
        ``[N]`` float32.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return bce.flatten(1).mean(-1)


def per_mask_dice(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Naive Dice loss of each mask: ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``, ``p = sigmoid``.

    Args:
        logits: ``[N, ...]`` float logits.
        targets: same shape, values in ``[0, 1]``.
        eps: smoothing added to numerator and denominator (1.0 in the reference).

    Returns:
        ``[N]`` float32.
    """
    p = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    return 1.0 - (2.0 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over every element of every mask (scalar float32)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="mean")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Naive Dice loss averaged over masks (scalar float32; 0 for an empty ``N``)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return per_mask_dice(logits, targets, eps).mean()


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``maps`` ``[N, H, W]`` at normalised ``coords`` ``[N, P, 2]`` (x, y in [0, 1]).

    Returns:
        ``[N, P]`` sampled values (align_corners=False; border values repeat outside the pixel centres).
    """
    grid = 2.0 * coords[:, :, None, :] - 1.0  # [N, P, 1, 2] in [-1, 1]
    out = F.grid_sample(
        maps[:, None].float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[:, 0, :, 0]


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick ``num_points`` points per mask, favouring uncertain logits (|logit| small).

    ``oversample_ratio * num_points`` random candidates are drawn, the
    ``importance_sample_ratio * num_points`` most uncertain are kept, and the rest are drawn
    uniformly at random.

    Args:
        logits: ``[N, H, W]``.

    Returns:
        ``[N, num_points, 2]`` normalised (x, y) coordinates in ``[0, 1]``.
    """
    n = logits.shape[0]
    device = logits.device
    num_sampled = int(num_points * oversample_ratio)
    cand = torch.rand(n, num_sampled, 2, device=device, generator=generator)
    uncertainty = -point_sample(logits.detach(), cand).abs()  # [N, num_sampled]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # [N, num_uncertain]
    picked = torch.gather(cand, 1, idx[:, :, None].expand(-1, -1, 2))
    if num_random > 0:
        rand = torch.rand(n, num_random, 2, device=device, generator=generator)
        picked = torch.cat([picked, rand], dim=1)
    return picked


class MaskLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * Dice`` between predicted logits and ground-truth masks.

    Args:
        bce_weight: weight of the sigmoid BCE term (2.0 in the reference).
        dice_weight: weight of the Dice term (0.5 in the reference).
        resolution: ``'low'`` (targets resized to the logits, nearest) or ``'full'`` (logits
            upsampled bilinearly to the target size).
        point_sampling: compute both terms on ``num_points`` sampled points per mask instead of
            every pixel (uncertainty-weighted, as in the official recipe).
        num_points, oversample_ratio, importance_sample_ratio: point-sampling parameters.
    """

    def __init__(
        self,
        *,
        bce_weight: float = 2.0,
        dice_weight: float = 0.5,
        resolution: str = "low",
        point_sampling: bool = False,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if resolution not in ("low", "full"):
            raise ValueError(f"resolution must be 'low' or 'full', got {resolution!r}")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.resolution = resolution
        self.point_sampling = point_sampling
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def align(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring logits ``[n, h, w]`` and targets ``[n, H, W]`` of one image to a common size."""
        if logits.shape[-2:] == target.shape[-2:]:
            return logits, target.float()
        if self.resolution == "low":
            t = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
            return logits, t
        return upsample_logits(logits, tuple(target.shape[-2:])), target.float()

    def forward(
        self, logits: torch.Tensor, targets: list[torch.Tensor], counts: list[int]
    ) -> dict[str, torch.Tensor]:
        """Compute the weighted mask losses.

        Args:
            logits: ``[N, h, w]`` mask logits, objects of all images concatenated in order.
            targets: per image ``[n_i, H_i, W_i]`` binary masks, ``sum(n_i) == N``.
            counts: ``[n_i]``.

        Returns:
            ``{'loss_mask': bce_weight * BCE, 'loss_dice': dice_weight * Dice}`` (scalars).
        """
        if sum(counts) != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} predicted masks but {sum(counts)} targets")
        bce_terms, dice_terms = [], []
        for lg, tg in zip(logits.split(counts), targets):
            if lg.shape[0] == 0:
                continue
            lg, tg = self.align(lg, tg.to(lg.device))
            if self.point_sampling:
                coords = uncertain_point_coords(
                    lg, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                lg, tg = point_sample(lg, coords), point_sample(tg, coords)
            bce_terms.append(per_mask_bce(lg, tg))
            dice_terms.append(per_mask_dice(lg, tg))
        if not bce_terms:  # no masks at all: keep the graph, contribute zero
            zero = logits.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        # Mean per mask, then over masks (equal to the pixel mean when all masks share one size).
        bce = torch.cat(bce_terms).mean()
        dice = torch.cat(dice_terms).mean()
        return {"loss_mask": self.bce_weight * bce, "loss_dice": self.dice_weight * dice}
