"""Test-only hooks that inject faults into a training run (imported by configs the tests write)."""

from __future__ import annotations

import os
import signal

import torch
from mmengine.hooks import Hook


class KillAtIterHook(Hook):
    """SIGKILL this process right after iteration ``at`` (1-based) finished, checkpoint hooks included."""

    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseOnRankHook(Hook):
    """Raise a RuntimeError on rank ``rank`` before iteration ``at`` (0-based)."""

    def __init__(self, rank: int, at: int = 0) -> None:
        self.rank, self.at = rank, at

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.rank == self.rank and runner.iter == self.at:
            raise RuntimeError(f"injected failure on rank {runner.rank} at iteration {runner.iter}")


class NaNLossAtHook(Hook):
    """Make the loss non-finite at the given iterations (0-based) by poisoning the model's loss terms."""

    def __init__(self, iters: list[int]) -> None:
        self.iters = set(iters)

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        orig = model.compute_loss

        def compute_loss(batch):
            losses = orig(batch)
            if runner.iter in self.iters:
                losses = {k: v * torch.tensor(float("nan")) for k, v in losses.items()}
            return losses

        model.compute_loss = compute_loss
