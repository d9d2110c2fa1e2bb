"""TimeBudgetHook with a fake clock: a slow warm-up does not shrink the plan (it is made once the speed has
settled), a mid-run slowdown shortens it, a speed-up lengthens it up to the configured max_iters, and the
cosine's end follows every change."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

from projects.sa2va.engine.time_budget import TimeBudgetHook


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Loop:
    def __init__(self, max_iters: int) -> None:
        self._max_iters = max_iters

    @property
    def max_iters(self) -> int:
        return self._max_iters


def make_runner(max_iters: int, warmup: int = 60):
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    warm = LinearLR(opt, start_factor=0.1, by_epoch=False, begin=0, end=warmup)
    cos = CosineAnnealingLR(opt, eta_min=0.0, by_epoch=False, begin=warmup, end=max_iters)
    logs: list[str] = []
    logger = SimpleNamespace(info=logs.append, warning=logs.append)
    runner = SimpleNamespace(train_loop=Loop(max_iters), param_schedulers=[warm, cos], logger=logger, iter=0)
    return runner, warm, cos, logs


def simulate(
    hook: TimeBudgetHook, runner, clock: FakeClock, duration: Callable[[int], float]
) -> tuple[int, float]:
    """Run the loop as mmengine does (``while iter < max_iters``); returns (iterations run, seconds used)."""
    hook.before_train(runner)
    start, i = clock.t, 0
    while i < runner.train_loop.max_iters:
        clock.t += duration(i)
        runner.iter = i
        hook.after_train_iter(runner, i)
        i += 1
    return i, clock.t - start


def jitter(i: int) -> float:
    """Deterministic +-5 % noise."""
    return 1.0 + 0.05 * math.sin(1.7 * i)


def test_slow_warm_up_then_fast_uses_the_budget() -> None:
    """The issue's case: the first 20 iterations 4x slower; calibrating over iterations 10-40 planned
    about half the iterations that fit. Here the plan uses the budget within 2 %."""
    clock = FakeClock()
    runner, _, cos, logs = make_runner(3000)
    hook = TimeBudgetHook(seconds=230, calibrate_at=40, skip=10, reserve=0.1, clock=clock)
    fast = 0.15
    done, used = simulate(hook, runner, clock, lambda i: (0.6 if i < 20 else fast) * jitter(i))
    usable = 230 * 0.9
    ideal = 20 + (usable - 20 * 0.6) / fast  # 1320 iterations
    assert done == pytest.approx(ideal, rel=0.02)
    assert 0.98 * usable <= used <= usable * 1.01
    first_iter, first_spi, _ = hook.plans[0]
    assert first_iter >= 40 and first_spi == pytest.approx(fast, rel=0.06)  # measured after warm-up
    assert cos.end == done and cos.T_max == done - 60  # the cosine ends with the run
    assert any("speed settled" in line for line in logs)


def test_mid_run_slowdown_shortens_the_plan() -> None:
    clock = FakeClock()
    runner, _, cos, logs = make_runner(3000)
    hook = TimeBudgetHook(seconds=200, calibrate_at=40, skip=10, reserve=0.1, clock=clock)
    done, used = simulate(hook, runner, clock, lambda i: (0.1 if i < 500 else 0.25) * jitter(i))
    plans = [p[2] for p in hook.plans]
    early = max(p for (at, _, p) in hook.plans if at <= 500)
    assert early == pytest.approx(1800, rel=0.03)  # 180 s usable at 0.1 s/iter
    # After the slowdown: 50 s for 500 iterations, the remaining ~130 s at 0.25 s/iter.
    assert done == pytest.approx(500 + (180 - 50) / 0.25, rel=0.05) and done < early
    assert used <= 200, "the run went over its budget (the plan was not shortened in time)"
    assert used >= 0.95 * 180
    assert cos.end == done and abs(min(plans) - done) <= 0.02 * done  # small later plans are not applied
    assert any(f"-> {done}" in line for line in logs)
    assert not any("budget used up" in line for line in logs)  # the plan, not the safety net, ended it


def test_speed_up_extends_the_plan_up_to_the_configured_max() -> None:
    clock = FakeClock()
    runner, _, cos, _ = make_runner(1000)
    hook = TimeBudgetHook(seconds=150, calibrate_at=40, skip=10, reserve=0.0, recheck_every=25, clock=clock)
    # 0.3 s/iter for 300 iterations (a plan of ~500), then 0.05 s/iter: 1000 iterations fit in 150 s.
    done, used = simulate(hook, runner, clock, lambda i: 0.3 if i < 300 else 0.05)
    planned = [p for (_, _, p) in hook.plans]
    assert planned[0] == pytest.approx(500, abs=2)
    assert done == 1000 and max(planned) == 1000  # extended, never beyond the configured max_iters
    assert used < 150 and cos.end == 1000 and cos.T_max == 1000 - 60


def test_unsettled_speed_plans_after_recheck_every_and_the_safety_net_ends_an_overrun() -> None:
    clock = FakeClock()
    runner, *_ = make_runner(100_000)
    hook = TimeBudgetHook(seconds=60, calibrate_at=20, skip=5, recheck_every=30, window=5, clock=clock)
    # Always getting faster by 3 % per iteration: never "settled"; the first plan comes 30 after calibrate_at.
    simulate(hook, runner, clock, lambda i: max(0.02, 1.0 * 0.97**i))
    assert hook.plans[0][0] == 50
    # A run whose every iteration suddenly takes longer than the whole budget left ends at once.
    clock2 = FakeClock()
    runner2, _, _, logs2 = make_runner(1000)
    hook2 = TimeBudgetHook(seconds=10, calibrate_at=20, skip=5, reserve=0.0, clock=clock2)
    done, _ = simulate(hook2, runner2, clock2, lambda i: 0.1 if i < 30 else 100.0)
    assert done == 31 and any("budget used up at iteration 31" in line for line in logs2)


def test_arguments_are_checked() -> None:
    for kwargs in (
        dict(seconds=0),
        dict(seconds=1, skip=5, calibrate_at=5),
        dict(seconds=1, reserve=1.0),
        dict(seconds=1, window=0),
        dict(seconds=1, tolerance=1.0),
    ):
        with pytest.raises(ValueError):
            TimeBudgetHook(**kwargs)


@pytest.mark.slow
def test_in_a_real_runner_the_loop_ends_at_the_planned_iteration_with_a_checkpoint(tmp_path) -> None:
    """Sa2VARunner on the tiny CPU config; a fake clock makes every iteration take exactly 1 s."""
    import itertools
    from pathlib import Path

    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    cfg = Config.fromfile(str(Path(__file__).parent / "configs" / "tiny_fault.py"))
    cfg.merge_from_dict({"train_cfg.max_epochs": 1, "default_hooks.checkpoint.interval": 1000})
    ticks = itertools.count()
    cfg.work_dir = str(tmp_path)
    cfg.launcher = "none"
    cfg.experiment_name = "test_time_budget_runner"
    runner = RUNNERS.build(cfg)
    clock = lambda: float(next(ticks))  # noqa: E731
    hook = TimeBudgetHook(seconds=6, calibrate_at=2, skip=0, reserve=0.0, window=1, clock=clock)
    runner.register_hook(hook, priority=hook.priority)
    planned = runner.train_loop.max_iters
    runner.train()
    assert planned > 6 and runner.iter == 6 and runner.train_loop.max_iters == 6
    assert (tmp_path / "iter_6.pth").is_file()  # the final checkpoint is saved at the new end
