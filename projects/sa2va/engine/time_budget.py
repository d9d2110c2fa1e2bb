"""Fit a training run into a wall-clock budget (mmengine 0.10.6 ``Hook``; iteration-based loops).

Short learning runs on a rented GPU have a time budget, not an iteration budget, and the iteration
time is unknown before the run; on a fresh machine the first iterations can be several times slower
than the rest (kernel autotuning, caches, data workers spinning up). :class:`TimeBudgetHook`:

* measures every iteration's duration (the time between two ``after_train_iter`` calls; the first
  ``skip`` iterations are never measured);
* plans once the speed has settled: at the first iteration ``>= calibrate_at`` where the median
  duration of the last ``window`` iterations is no more than ``tolerance`` faster than the median of
  the ``window`` before them (or, if it never settles, ``recheck_every`` iterations after
  ``calibrate_at``). The plan is ``done + (budget * (1 - reserve) - elapsed) / median``;
* re-plans every ``recheck_every`` iterations with the median of the last ``window`` iterations, so a
  slowdown during the run shortens the plan and a speed-up lengthens it again, never beyond the
  configured ``max_iters`` (an upper bound) and never beyond what fits the budget. A plan that differs
  from the current ``max_iters`` by at most ``min_change`` of the remaining iterations is not applied.

A changed ``max_iters`` moves the ``end`` (and ``T_max``) of every parameter scheduler that ended at
the old ``max_iters``: a cosine that has not started yet then runs exactly over the new span; one that
has started continues from its current value and still reaches ``eta_min`` at the new end (mmengine's
chainable form), with a warning. Every plan is logged. As a safety net, training ends after the
iteration in which the whole budget is used (the final validation and checkpoint still happen: the
loop ends normally).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .schedule import built_schedulers

__all__ = ["TimeBudgetHook"]


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Fit training into ``seconds`` of wall time (measured from ``before_train``).

    Args:
        seconds: the budget for the training loop (validation included).
        calibrate_at: earliest iteration (1-based count) at which the first plan is made.
        skip: iterations at the start that are never measured (start-up, first-batch compilation).
        reserve: fraction of the budget kept free for validation and checkpoint saving.
        window: iterations per median (the speed estimate) and per settle comparison.
        tolerance: the speed has settled when the last window's median is at most this fraction
            faster than the previous window's.
        recheck_every: iterations between re-plans (and the longest wait for a settled speed).
        min_change: a new plan is applied only if it moves ``max_iters`` by more than this fraction of
            the iterations left (avoids moving the schedulers for noise).
        clock: seconds as a float (``time.perf_counter``; tests pass a fake clock).
    """

    priority = "LOW"  # before CheckpointHook (VERY_LOW), which must see the final max_iters

    def __init__(
        self,
        seconds: float,
        calibrate_at: int = 30,
        skip: int = 10,
        reserve: float = 0.1,
        *,
        window: int = 10,
        tolerance: float = 0.1,
        recheck_every: int = 50,
        min_change: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if not 0 <= skip < calibrate_at:
            raise ValueError(f"need 0 <= skip < calibrate_at, got skip={skip}, calibrate_at={calibrate_at}")
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"reserve must be in [0, 1), got {reserve}")
        if window < 1 or recheck_every < 1:
            raise ValueError(f"window and recheck_every must be >= 1, got {window}, {recheck_every}")
        if not 0.0 <= tolerance < 1.0 or not 0.0 <= min_change < 1.0:
            raise ValueError(f"tolerance and min_change must be in [0, 1), got {tolerance}, {min_change}")
        self.seconds = float(seconds)
        self.calibrate_at = int(calibrate_at)
        self.skip = int(skip)
        self.reserve = float(reserve)
        self.window = int(window)
        self.tolerance = float(tolerance)
        self.recheck_every = int(recheck_every)
        self.min_change = float(min_change)
        self.clock = clock
        self._t0 = 0.0
        self._last = 0.0
        self._durations: deque[float] = deque(maxlen=2 * self.window)
        self._configured_max: int | None = None
        self._last_plan_at: int | None = None  # iteration count of the last plan (None: no plan yet)
        self._warned: set[int] = set()
        #: Median seconds per iteration of the last plan (None before the first).
        self.seconds_per_iter: float | None = None
        #: ``(iteration, seconds_per_iter, planned max_iters)`` of every plan, applied or not.
        self.plans: list[tuple[int, float, int]] = []

    def before_train(self, runner: Any) -> None:
        self._t0 = self._last = self.clock()
        self._durations.clear()
        self._configured_max = int(runner.train_loop.max_iters)
        self._last_plan_at = None

    # ------------------------------------------------------------------------------------- measuring
    def _settled(self) -> bool:
        """Whether the last window's median is no more than ``tolerance`` faster than the one before."""
        if len(self._durations) < 2 * self.window:
            return False
        values = list(self._durations)
        before = statistics.median(values[: self.window])
        last = statistics.median(values[self.window :])
        return last >= (1.0 - self.tolerance) * before

    def _plan_due(self, done: int) -> str | None:
        """Why a plan is made at ``done`` iterations (log wording), or None."""
        if self._last_plan_at is None:
            if done < self.calibrate_at or len(self._durations) < min(self.window, done - self.skip):
                return None
            if self._settled():
                return "speed settled"
            if done - self.calibrate_at >= self.recheck_every:
                return "speed not settled; planning with the latest window"
            return None
        if done - self._last_plan_at >= self.recheck_every:
            return "re-check"
        return None

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        done = runner.iter + 1  # iterations completed, including this one
        now = self.clock()
        if done > self.skip:
            self._durations.append(now - self._last)
        self._last = now
        loop = runner.train_loop
        elapsed = now - self._t0
        if elapsed > self.seconds and done < loop.max_iters:
            runner.logger.warning(
                f"TimeBudgetHook: {self.seconds:.0f} s budget used up at iteration {done}: ending training"
            )
            self._set_max_iters(runner, done)
            return
        why = self._plan_due(done)
        if why is not None:
            self._plan(runner, done, elapsed, why)

    # -------------------------------------------------------------------------------------- planning
    def _plan(self, runner: Any, done: int, elapsed: float, why: str) -> None:
        loop = runner.train_loop
        self._last_plan_at = done
        recent = list(self._durations)[-self.window :]
        spi = statistics.median(recent)
        self.seconds_per_iter = spi
        usable = self.seconds * (1.0 - self.reserve)
        left = usable - elapsed
        fits = done + max(0, math.floor(left / spi)) if spi > 0 else self._configured_max
        upper = self._configured_max if self._configured_max is not None else loop.max_iters
        new_max = max(done, min(upper, fits))
        self.plans.append((done, spi, new_max))
        current = loop.max_iters
        threshold = self.min_change * max(current - done, 0)
        apply = new_max != current and (abs(new_max - current) > threshold or new_max == done)
        runner.logger.info(
            f"TimeBudgetHook: iteration {done} ({why}): {spi:.3f} s/iter (median of the last {len(recent)}), "
            f"{elapsed:.0f} s of {usable:.0f} s used; {fits} iterations fit, configured {upper}, "
            f"planned {current}" + (f" -> {new_max}" if apply else " (kept)")
        )
        if apply:
            self._set_max_iters(runner, new_max)

    def _set_max_iters(self, runner: Any, new_max: int) -> None:
        loop = runner.train_loop
        old_max = loop.max_iters
        if new_max == old_max:
            return
        for sched in built_schedulers(runner):
            if getattr(sched, "by_epoch", False) or sched.end != old_max:
                continue
            started = sched.begin < runner.iter + 1
            if hasattr(sched, "T_max") and sched.T_max == old_max - sched.begin:
                sched.T_max = max(1, new_max - sched.begin)
            sched.end = new_max
            if started and id(sched) not in self._warned:
                self._warned.add(id(sched))
                runner.logger.warning(
                    f"TimeBudgetHook: {type(sched).__name__} had already started; it continues from its "
                    "current value over the new span (chainable form), not the curve planned at the start"
                )
        loop._max_iters = int(new_max)
        runner.logger.info(f"TimeBudgetHook: max_iters {old_max} -> {new_max}")
