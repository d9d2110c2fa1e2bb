"""Soft clDice: the soft skeleton thins to the centre line, the loss sees breaks, MaskLoss wires it."""

from __future__ import annotations

import torch

from projects.sa2va.models.losses import MaskLoss, per_mask_cldice, soft_skeleton


def _bar(width: int, size: int = 32) -> torch.Tensor:
    """``[1, size, size]`` horizontal bar of ``width`` rows centred at row 16, columns 4..27."""
    m = torch.zeros(1, size, size)
    m[0, 16 - width // 2 : 16 - width // 2 + width, 4:28] = 1.0
    return m


def test_soft_skeleton_of_a_thick_bar_is_its_centre_line():
    skel = soft_skeleton(_bar(5), iters=5)[0]
    rows = skel.sum(1)
    assert rows.argmax().item() == 16
    # Almost all skeleton mass lies on the centre row, none outside the bar.
    assert rows[16] / rows.sum() > 0.8
    assert skel[:14].sum() == 0 and skel[19:].sum() == 0


def test_cldice_is_near_zero_for_a_perfect_prediction_and_sees_a_break():
    target = _bar(3)
    perfect = (target * 2 - 1) * 20.0  # logits
    broken = perfect.clone()
    broken[0, :, 14:18] = -20.0  # a 4-px gap across the vessel
    thinner = perfect.clone()
    thinner[0, 15, :] = -20.0  # as many pixels removed along the edge, no break (width 3 -> 2)
    assert per_mask_cldice(perfect, target, iters=3).item() < 0.02
    l_break = per_mask_cldice(broken, target, iters=3).item()
    l_thin = per_mask_cldice(thinner, target, iters=3).item()
    assert l_break > l_thin


def test_mask_loss_adds_cldice_only_when_weighted_and_it_has_gradients():
    target = [_bar(3)]
    logits = torch.zeros(1, 32, 32, requires_grad=True)
    plain = MaskLoss(resolution="full")
    assert set(plain(logits, target, [1])) == {"loss_mask", "loss_dice"} == set(plain.loss_names)
    with_cl = MaskLoss(resolution="full", cldice_weight=0.5, cldice_iters=3)
    out = with_cl(logits, target, [1])
    assert set(out) == {"loss_mask", "loss_dice", "loss_cldice"} == set(with_cl.loss_names)
    expected = 0.5 * per_mask_cldice(logits, target[0], iters=3).mean()
    assert torch.allclose(out["loss_cldice"], expected)
    out["loss_cldice"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # The other terms are unchanged by the extra one.
    base = plain(logits.detach(), target, [1])
    assert torch.equal(base["loss_mask"], with_cl(logits.detach(), target, [1])["loss_mask"])
    # No masks at all: every key, zero.
    empty = with_cl(torch.zeros(0, 32, 32), [torch.zeros(0, 32, 32)], [0])
    assert set(empty) == set(with_cl.loss_names) and all(v.item() == 0 for v in empty.values())
