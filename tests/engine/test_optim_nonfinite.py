"""DeviceAmpOptimWrapper's non-finite guard on a toy model (no distributed group: one rank decides)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from projects.sa2va.engine.optim import DeviceAmpOptimWrapper, NonFiniteLossError


def make(acc: int = 1, k: int = 3, clip: bool = True) -> tuple[nn.Linear, DeviceAmpOptimWrapper]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ow = DeviceAmpOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        accumulative_counts=acc,
        clip_grad=dict(max_norm=1.0) if clip else None,
        max_consecutive_nonfinite=k,
    )
    ow.initialize_count_status(model, 0, 100)
    return model, ow


def loss_of(model: nn.Module, poison: bool = False) -> torch.Tensor:
    loss = model(torch.ones(2, 4)).pow(2).mean()
    return loss * float("nan") if poison else loss


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_nan_loss_skips_step_and_zeroes_grads():
    model, ow = make()
    before = params(model)
    ow.update_params(loss_of(model, poison=True))
    assert all(torch.equal(a, b) for a, b in zip(before, params(model))), "parameters changed on a NaN loss"
    assert all(p.grad is None or not p.grad.any() for p in model.parameters()), "gradients not zeroed"
    assert ow.skipped_updates == 1 and ow.consecutive_nonfinite == 1
    ow.update_params(loss_of(model))  # a finite loss updates again and resets the streak
    assert not all(torch.equal(a, b) for a, b in zip(before, params(model)))
    assert ow.consecutive_nonfinite == 0 and ow.skipped_updates == 1


def test_nan_in_accumulation_cycle_discards_the_whole_cycle():
    model, ow = make(acc=2)
    before = params(model)
    ow.update_params(loss_of(model))  # micro-step 1 of 2: finite, accumulates
    ow.update_params(loss_of(model, poison=True))  # micro-step 2: NaN -> the cycle's update is skipped
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))
    assert ow.skipped_updates == 1
    ow.update_params(loss_of(model))
    ow.update_params(loss_of(model))  # a clean cycle steps, with only its own gradients
    ref, ref_ow = make(acc=2)
    ref_ow.update_params(loss_of(ref))
    ref_ow.update_params(loss_of(ref))
    assert all(torch.equal(a, b) for a, b in zip(params(ref), params(model)))


def test_k_consecutive_nonfinite_losses_raise():
    model, ow = make(k=3)
    ow.update_params(loss_of(model, poison=True))
    ow.update_params(loss_of(model, poison=True))
    ow.update_params(loss_of(model))  # the streak restarts
    ow.update_params(loss_of(model, poison=True))
    ow.update_params(loss_of(model, poison=True))
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses in a row \(iterations 3\.\.5\)"):
        ow.update_params(loss_of(model, poison=True))


def test_the_check_waits_for_the_end_of_the_cycle_and_stops_there(monkeypatch):
    import projects.sa2va.engine.optim as optim

    calls = []
    real = optim.any_rank_flags
    monkeypatch.setattr(optim, "any_rank_flags", lambda f, d: calls.append(len(f)) or real(f, d))
    model, ow = make(acc=4, k=3)
    for poison in (False, True, True, False):  # 2 in a row, below the limit of 3
        ow.update_params(loss_of(model, poison=poison))
    # one decision per cycle (no device sync or all-reduce between a forward and its backward)
    assert calls == [4] and ow.skipped_updates == 1 and ow.consecutive_nonfinite == 0
    model, ow = make(acc=2, k=2)
    ow.update_params(loss_of(model, poison=True))
    with pytest.raises(NonFiniteLossError, match=r"2 non-finite losses in a row \(iterations 0\.\.1\)"):
        ow.update_params(loss_of(model, poison=True))
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_nonfinite_grad_norm_skips_step():
    model, ow = make()
    before = params(model)
    loss = model(torch.full((2, 4), 1e38)).pow(2).mean()  # finite forward? no: overflows -> inf loss
    ow.update_params(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))
    # finite loss, infinite gradient: the clip norm is inf -> the step is skipped
    model.weight.register_hook(lambda g: g * float("inf"))
    ow.update_params(loss_of(model))
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))
    assert ow.skipped_updates == 2


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="max_consecutive_nonfinite"):
        DeviceAmpOptimWrapper(
            optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1), max_consecutive_nonfinite=-1
        )
