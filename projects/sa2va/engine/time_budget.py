"""Fit a training run into a wall-clock budget (mmengine 0.10.6 ``Hook``; iteration-based loops).

Short learning runs on a rented GPU have a time budget, not an iteration budget, and the iteration
time is unknown before the run. :class:`TimeBudgetHook` measures it over iterations
``(skip, calibrate_at]`` and, if the planned ``max_iters`` would not fit, lowers the loop's
``max_iters`` and moves the ``end`` (and ``T_max``) of every parameter scheduler that ended at the old
``max_iters``: a cosine that has not started yet (e.g. after a warm-up longer than ``calibrate_at``)
then completes exactly at the new end. As a safety net, training ends after the iteration in which
the budget runs out (the final validation and checkpoint still happen: the loop ends normally).
"""

from __future__ import annotations

import math
import time
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["TimeBudgetHook"]


def _schedulers(runner: Any) -> list[Any]:
    scheds = runner.param_schedulers or []
    if isinstance(scheds, dict):
        return [s for group in scheds.values() for s in group]
    return list(scheds)


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Shorten training to ``seconds`` of wall time (measured from ``before_train``).

    Args:
        seconds: the budget for the training loop (validation included).
        calibrate_at: iteration (1-based count) at which the time per iteration is measured.
        skip: iterations excluded from the measurement (start-up, autotuning, worker spin-up).
        reserve: fraction of the budget kept free for validation and checkpoint saving.
    """

    priority = "LOW"  # before CheckpointHook (VERY_LOW), which must see the final max_iters

    def __init__(self, seconds: float, calibrate_at: int = 30, skip: int = 10, reserve: float = 0.1) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if not 0 <= skip < calibrate_at:
            raise ValueError(f"need 0 <= skip < calibrate_at, got skip={skip}, calibrate_at={calibrate_at}")
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"reserve must be in [0, 1), got {reserve}")
        self.seconds = float(seconds)
        self.calibrate_at = int(calibrate_at)
        self.skip = int(skip)
        self.reserve = float(reserve)
        self._t0 = 0.0
        self._t_skip = 0.0
        self.seconds_per_iter: float | None = None

    def before_train(self, runner: Any) -> None:
        self._t0 = time.perf_counter()
        self._t_skip = self._t0

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        done = runner.iter + 1  # iterations completed, including this one
        now = time.perf_counter()
        loop = runner.train_loop
        if done == self.skip:
            self._t_skip = now
        if done == self.calibrate_at:
            self.seconds_per_iter = (now - self._t_skip) / (self.calibrate_at - self.skip)
            left = self.seconds * (1.0 - self.reserve) - (now - self._t0)
            fits = done + max(1, math.floor(left / self.seconds_per_iter))
            runner.logger.info(
                f"TimeBudgetHook: {self.seconds_per_iter:.3f} s/iter; {loop.max_iters} iterations planned, "
                f"{fits} fit in the {self.seconds:.0f} s budget"
            )
            if fits < loop.max_iters:
                self._shorten(runner, fits)
        elif now - self._t0 > self.seconds and done < loop.max_iters:
            runner.logger.warning(
                f"TimeBudgetHook: {self.seconds:.0f} s budget used up at iteration {done}: ending training"
            )
            self._shorten(runner, done)

    def _shorten(self, runner: Any, new_max: int) -> None:
        loop = runner.train_loop
        old_max = loop.max_iters
        for sched in _schedulers(runner):
            if getattr(sched, "by_epoch", False) or sched.end != old_max:
                continue
            started = sched.begin < runner.iter + 1
            if hasattr(sched, "T_max") and sched.T_max == old_max - sched.begin:
                sched.T_max = max(1, new_max - sched.begin)
            sched.end = new_max
            if started:
                runner.logger.warning(
                    f"TimeBudgetHook: {type(sched).__name__} had already started; its remaining curve is "
                    "compressed (chainable form), not exact"
                )
        loop._max_iters = int(new_max)
        runner.logger.info(f"TimeBudgetHook: max_iters {old_max} -> {new_max}")
