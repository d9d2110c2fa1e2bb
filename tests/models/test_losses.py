"""Mask losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from projects.sa2va.models.losses import MaskLoss, per_mask_bce, per_mask_dice, point_sample

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over every element of every mask (scalar float32)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="mean")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """:func:`per_mask_dice` averaged over masks (scalar float32; 0 for an empty ``N``)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return per_mask_dice(logits, targets, eps).mean()


def test_bce_by_hand():
    logits = torch.tensor([[[0.0, LN3], [-LN3, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # -log(0.5), -log(0.75), -log(0.75), -log(0.5)
    expected = (2 * math.log(2.0) + 2 * -math.log(0.75)) / 4
    assert float(sigmoid_bce_loss(logits, target)) == pytest.approx(expected, abs=1e-6)
    assert float(per_mask_bce(logits, target)[0]) == pytest.approx(expected, abs=1e-6)


def test_naive_dice_by_hand():
    logits = torch.tensor([[[0.0, LN3], [-LN3, 0.0]]])  # p = 0.5, 0.75, 0.25, 0.5
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inter = 0.5 + 0.75
    expected = 1 - (2 * inter + 1) / ((0.5 + 0.75 + 0.25 + 0.5) + 2 + 1)
    assert float(per_mask_dice(logits, target)[0]) == pytest.approx(expected, abs=1e-6)
    # mean over masks: a second, perfect-ish mask
    big = torch.full((1, 2, 2), 50.0)
    two = dice_loss(torch.cat([logits, big]), torch.cat([target, torch.ones(1, 2, 2)]))
    assert float(two) == pytest.approx((expected + (1 - 9 / 9)) / 2, abs=1e-5)
    assert float(dice_loss(torch.zeros(0, 2, 2), torch.zeros(0, 2, 2))) == 0.0


def test_mask_loss_weights_and_low_resolution_targets():
    # 2x2 logits vs a 4x4 target: 'low' nearest-resizes the target to 2x2 (picks rows/cols 0 and 2).
    logits = torch.tensor([[[0.0, LN3], [-LN3, 0.0]]])
    target = torch.zeros(1, 4, 4)
    target[0, 0, 0] = target[0, 0, 2] = 1.0  # -> [[1, 1], [0, 0]] after nearest
    loss = MaskLoss(resolution="low")(logits, [target], [1])
    bce = (2 * math.log(2.0) + 2 * -math.log(0.75)) / 4
    dice = 1 - (2 * 1.25 + 1) / (2.0 + 2 + 1)
    assert float(loss["loss_mask"]) == pytest.approx(2.0 * bce, abs=1e-6)
    assert float(loss["loss_dice"]) == pytest.approx(0.5 * dice, abs=1e-6)


def test_full_resolution_upsamples_logits_to_the_target():
    seen = {}

    class Spy(MaskLoss):
        def align(self, logits, target):
            out = super().align(logits, target)
            seen["shapes"] = (tuple(out[0].shape), tuple(out[1].shape))
            return out

    logits = torch.randn(2, 8, 8)
    targets = [torch.zeros(2, 32, 24)]
    Spy(resolution="full")(logits, targets, [2])
    assert seen["shapes"] == ((2, 32, 24), (2, 32, 24))
    Spy(resolution="low")(logits, targets, [2])
    assert seen["shapes"] == ((2, 8, 8), (2, 8, 8))


def test_point_sampling_matches_dense_loss_on_constant_maps():
    # Points drawn inside the outermost pixel centres see the constant map exactly, as dense pixels do.
    logits = torch.full((3, 16, 16), 0.7)
    target = torch.ones(3, 16, 16)
    coords = 0.5 / 16 + torch.rand(3, 64, 2, generator=torch.Generator().manual_seed(0)) * (15 / 16)
    assert torch.allclose(point_sample(logits, coords), torch.full((3, 64), 0.7))
    assert torch.allclose(point_sample(target, coords), torch.ones(3, 64))
    dense = MaskLoss()(logits, [target], [3])
    p = 1 / (1 + math.exp(-0.7))
    assert float(dense["loss_mask"]) == pytest.approx(2.0 * -math.log(p), abs=1e-5)
    # The smoothed Dice depends on how many elements: 64 points, not 256 pixels.
    lg, tg = point_sample(logits, coords), point_sample(target, coords)
    assert float(0.5 * per_mask_dice(lg, tg).mean()) == pytest.approx(
        0.5 * (1 - (2 * 64 * p + 1) / (64 * p + 64 + 1)), abs=1e-5
    )


def test_point_sample_pads_the_edge_with_zeros_like_the_official_sampler():
    # bench/official/parity.py: the official recipe's grid_sample uses zero padding. At a corner of the
    # map (normalised 0, 0) half a pixel lies outside on each axis: a quarter of the value remains.
    maps = torch.full((1, 8, 8), 2.0)
    corner_and_edge = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [1.0, 0.5]]])
    assert torch.allclose(point_sample(maps, corner_and_edge), torch.tensor([[0.5, 1.0, 1.0]]))


def test_mismatched_counts_raise():
    with pytest.raises(ValueError, match="3 predicted masks but 2 targets"):
        MaskLoss()(torch.zeros(3, 4, 4), [torch.zeros(2, 4, 4)], [2])


def test_empty_batch_keeps_graph_with_zero_loss():
    logits = torch.zeros(0, 4, 4, requires_grad=True)
    out = MaskLoss()(logits, [torch.zeros(0, 4, 4)], [0])
    assert float(out["loss_mask"].detach()) == 0.0
    out["loss_mask"].backward()
