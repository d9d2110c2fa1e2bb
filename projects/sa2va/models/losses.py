"""Mask losses of the Sa2VA recipe: sigmoid BCE + naive Dice, optionally on sampled points, plus an
optional soft clDice term for thin tubular structures (vessels).

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


def soft_skeleton(prob: torch.Tensor, iters: int) -> torch.Tensor:
    """Differentiable skeleton of soft masks by iterated min/max pooling (soft morphological thinning).

    Each round erodes the mask (3x3 min pool as a cross: the minimum of a 3x1 and a 1x3 min pool),
    opens the eroded mask (erode then 3x3 max pool) and keeps what the opening removed. The union of
    these residues over ``iters`` rounds approximates the skeleton (Shit et al., CVPR 2021, "clDice").

    Args:
        prob: ``[N, H, W]`` values in ``[0, 1]``.
        iters: number of thinning rounds; should reach about half the widest structure's width.

    Returns:
        ``[N, H, W]`` soft skeleton in ``[0, 1]``.
    """

    def erode(x: torch.Tensor) -> torch.Tensor:
        a = -F.max_pool2d(-x, (3, 1), stride=1, padding=(1, 0))
        b = -F.max_pool2d(-x, (1, 3), stride=1, padding=(0, 1))
        return torch.minimum(a, b)

    def dilate(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=1, padding=1)

    x = prob[:, None].float()  # [N, 1, H, W]
    skel = F.relu(x - dilate(erode(x)))
    for _ in range(iters):
        x = erode(x)
        delta = F.relu(x - dilate(erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel[:, 0]


def per_mask_cldice(
    logits: torch.Tensor, targets: torch.Tensor, iters: int = 10, eps: float = 1.0
) -> torch.Tensor:
    """Soft clDice loss of each mask: ``1 - 2 Tprec Tsens / (Tprec + Tsens)``.

    ``Tprec`` is the fraction of the predicted soft skeleton inside the target, ``Tsens`` the fraction
    of the target's skeleton covered by the prediction, so breaks in thin structures cost as much as
    missing thick ones.

    Args:
        logits: ``[N, H, W]`` float logits (full maps, not sampled points).
        targets: same shape, values in ``[0, 1]``.
        iters: soft-skeleton rounds (see :func:`soft_skeleton`).
        eps: smoothing of both ratios.

    Returns:
        ``[N]`` float32.
    """
    p = logits.float().sigmoid()
    t = targets.float()
    skel_p = soft_skeleton(p, iters).flatten(1)
    skel_t = soft_skeleton(t, iters).flatten(1)
    tprec = ((skel_p * t.flatten(1)).sum(-1) + eps) / (skel_p.sum(-1) + eps)
    tsens = ((skel_t * p.flatten(1)).sum(-1) + eps) / (skel_t.sum(-1) + eps)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``maps`` ``[N, H, W]`` at normalised ``coords`` ``[N, P, 2]`` (x, y in [0, 1]).

    Returns:
        ``[N, P]`` sampled values (align_corners=False). Between the outermost pixel centres and the map's
        edge the values blend towards 0 (zero padding), as in the official recipe's point sampler (the
        mmdet/detectron2 convention); ``bench/official/parity.py`` checks the losses against it.
    """
    grid = 2.0 * coords[:, :, None, :] - 1.0  # [N, P, 1, 2] in [-1, 1]
    out = F.grid_sample(
        maps[:, None].float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False
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
        cldice_weight: weight of an extra soft clDice term (0 = off, the reference). It is computed on
            the full aligned maps (never on sampled points) and logged as ``loss_cldice``.
        cldice_iters: soft-skeleton rounds of the clDice term.
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
        cldice_weight: float = 0.0,
        cldice_iters: int = 10,
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
        if cldice_weight < 0 or cldice_iters < 1:
            raise ValueError(
                f"cldice_weight must be >= 0 and cldice_iters >= 1, got {cldice_weight}, {cldice_iters}"
            )
        self.cldice_weight = cldice_weight
        self.cldice_iters = cldice_iters

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The keys :meth:`forward` returns."""
        return (
            ("loss_mask", "loss_dice", "loss_cldice")
            if self.cldice_weight > 0
            else ("loss_mask", "loss_dice")
        )

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
            ``{'loss_mask': bce_weight * BCE, 'loss_dice': dice_weight * Dice}`` (scalars), plus
            ``'loss_cldice': cldice_weight * clDice`` when ``cldice_weight > 0``.
        """
        if sum(counts) != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} predicted masks but {sum(counts)} targets")
        bce_terms, dice_terms, cldice_terms = [], [], []
        for lg, tg in zip(logits.split(counts), targets):
            if lg.shape[0] == 0:
                continue
            lg, tg = self.align(lg, tg.to(lg.device))
            if self.cldice_weight > 0:
                cldice_terms.append(per_mask_cldice(lg, tg, self.cldice_iters))
            if self.point_sampling:
                coords = uncertain_point_coords(
                    lg, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                lg, tg = point_sample(lg, coords), point_sample(tg, coords)
            bce_terms.append(per_mask_bce(lg, tg))
            dice_terms.append(per_mask_dice(lg, tg))
        if not bce_terms:  # no masks at all: keep the graph, contribute zero
            zero = logits.sum() * 0.0
            return dict.fromkeys(self.loss_names, zero)
        # Mean per mask, then over masks (equal to the pixel mean when all masks share one size).
        bce = torch.cat(bce_terms).mean()
        dice = torch.cat(dice_terms).mean()
        losses = {"loss_mask": self.bce_weight * bce, "loss_dice": self.dice_weight * dice}
        if cldice_terms:
            losses["loss_cldice"] = self.cldice_weight * torch.cat(cldice_terms).mean()
        return losses
