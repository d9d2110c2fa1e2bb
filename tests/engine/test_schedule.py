"""Learning-rate schedules that follow the run's length (projects/sa2va/engine/schedule.py).

The reference schedule is written in fractions of the run (``of_run=True``), resolved when the training
loop is built; a schedule that ends before the run is an error, through both runners.
"""

from __future__ import annotations

import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import CosineAnnealingLR, LinearLR, MultiStepMomentum, OptimWrapper
from mmengine.registry import PARAM_SCHEDULERS

from projects.sa2va.engine.config_file import PACKAGE_CONFIGS
from projects.sa2va.engine.schedule import (
    RUN_FRACTION_KEY,
    ScheduleError,
    check_schedule_covers_run,
    fit_schedule_to_loop,
    resolve_run_fractions,
)
from tests.engine.test_launch import run_train

REFERENCE = PACKAGE_CONFIGS / "_base_" / "schedule_reference.py"


def _reference() -> list[dict]:
    return [dict(c) for c in Config.fromfile(str(REFERENCE)).param_scheduler]


@pytest.mark.parametrize(("epochs", "iters_per_epoch"), [(1, 110), (3, 55), (2, 70)])
def test_fractions_give_the_epoch_form_at_whole_epochs(epochs, iters_per_epoch):
    """At a whole number of epochs the resolved iterations are the ones mmengine gives the official form
    (``by_epoch=True, end=warmup_ratio * max_epochs, convert_to_iter_based=True``)."""
    resolved = resolve_run_fractions(_reference(), epochs * iters_per_epoch)
    warm = {"begin": 0, "end": 0.05 * epochs}
    cos = {"begin": 0.05 * epochs, "end": epochs}
    for got, want in zip(resolved, (warm, cos), strict=True):
        assert got["by_epoch"] is False and RUN_FRACTION_KEY not in got and "convert_to_iter_based" not in got
        assert got["begin"] == int(want["begin"] * iters_per_epoch)
        assert got["end"] == int(want["end"] * iters_per_epoch)
    assert resolved[0]["type"] is LinearLR and resolved[1]["type"] is CosineAnnealingLR
    assert resolved[1]["end"] == epochs * iters_per_epoch


def test_a_span_under_two_iterations_is_left_out_and_logged(caplog):
    with caplog.at_level(logging.INFO):
        resolved = resolve_run_fractions(_reference(), 10, logging.getLogger("t"))
    assert [(c["type"], c["begin"], c["end"]) for c in resolved] == [(CosineAnnealingLR, 0, 10)]
    assert (
        "LinearLR over 0-0.05 of the run: 0 of the 10 iterations this run trains, fewer than 2" in caplog.text
    )
    # One iteration is left out too (mmengine's LinearLR would never raise the learning rate again).
    resolved = resolve_run_fractions(_reference(), 39)
    assert [(c["type"], c["begin"], c["end"]) for c in resolved] == [(CosineAnnealingLR, 1, 39)]
    assert [c["end"] for c in resolve_run_fractions(_reference(), 40)] == [2, 40]


@pytest.mark.parametrize("max_iters", [1, 2, 10, 20, 25, 39, 40, 41, 100, 331])
def test_the_reference_schedule_rises_to_the_learning_rate_and_decays_for_any_length(max_iters):
    """Built by mmengine and stepped as the runner steps it: the learning rate reaches the optimiser's
    (within one warm-up step) and ends near 0. A warm-up resolved to one iteration once held it at
    ``start_factor`` x lr for the whole run (20-39 iterations)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optim = OptimWrapper(torch.optim.SGD([param], lr=4e-5))
    schedulers = [
        PARAM_SCHEDULERS.build(c, default_args=dict(optimizer=optim))
        for c in resolve_run_fractions(_reference(), max_iters)
    ]
    lrs = []
    for _ in range(max_iters):
        lrs.append(optim.param_groups[0]["lr"])
        for s in schedulers:
            s.step()
    warm = [c for c in resolve_run_fractions(_reference(), max_iters) if c["type"] is LinearLR]
    peak = warm[0]["end"] if warm else 0
    assert max(lrs) == pytest.approx(4e-5, rel=1e-6)
    assert lrs.index(max(lrs)) <= peak
    if max_iters >= 10:
        assert lrs[-1] < 0.03 * 4e-5


def test_fractions_outside_the_run_are_refused():
    bad = [dict(type=LinearLR, of_run=True, begin=0.0, end=2.0)]
    with pytest.raises(ScheduleError, match=r"LinearLR with of_run=True.*got begin=0.0, end=2.0"):
        resolve_run_fractions(bad, 100)
    with pytest.raises(ScheduleError, match=r"got begin=0.5, end=0.2"):
        resolve_run_fractions([dict(type=LinearLR, of_run=True, begin=0.5, end=0.2)], 100)


def test_other_schedulers_and_groups_pass_through():
    absolute = dict(type=CosineAnnealingLR, by_epoch=False, begin=0, end=40)
    assert resolve_run_fractions([absolute], 40) == [absolute]
    groups = {"a": [dict(type=LinearLR, of_run=True, begin=0.0, end=0.5)], "b": [absolute]}
    out = resolve_run_fractions(groups, 40)
    assert out["a"][0]["end"] == 20 and out["b"] == [absolute]


def test_a_schedule_that_ends_before_the_run_is_an_error():
    # The epoch form read from a config with max_epochs = 1, run for 3 epochs of 110 iterations.
    stale = [
        dict(type=LinearLR, by_epoch=True, begin=0, end=0.05, convert_to_iter_based=True),
        dict(type="CosineAnnealingLR", by_epoch=True, begin=0.05, end=1, convert_to_iter_based=True),
    ]
    with pytest.raises(ScheduleError) as err:
        check_schedule_covers_run(stale, 330, 110)
    message = str(err.value)
    assert "ends at iteration 110 (LinearLR at 5, CosineAnnealingLR at 110)" in message
    assert "the run trains 330 iterations (110 per epoch)" in message and "for the last 220" in message
    # Iteration ends, and the default end (the run's).
    with pytest.raises(ScheduleError, match="ends at iteration 30"):
        check_schedule_covers_run([dict(type=LinearLR, by_epoch=False, end=30)], 40, 10)
    check_schedule_covers_run([dict(type=LinearLR, by_epoch=False, begin=0)], 40, 10)
    check_schedule_covers_run([dict(type=LinearLR, by_epoch=False, end=40)], 40, 10)
    # Momentum schedulers do not count.
    check_schedule_covers_run([dict(type=MultiStepMomentum, by_epoch=False, milestones=[1], end=5)], 40, 10)


def test_a_schedule_that_ends_after_the_run_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        check_schedule_covers_run(
            [dict(type=LinearLR, by_epoch=False, end=50)], 40, 10, logging.getLogger("t")
        )
    assert "ends at iteration 50 (LinearLR at 50), after the run's 40" in caplog.text


def test_fit_schedule_to_loop_uses_the_loops_length():
    class Loop:
        max_iters = 330
        iters_per_epoch = 110

    out = fit_schedule_to_loop(_reference(), Loop())
    assert [(c["begin"], c["end"]) for c in out] == [(0, 16), (16, 330)]
    assert fit_schedule_to_loop(None, Loop()) is None


@pytest.mark.parametrize("deepspeed", [False, True], ids=["ddp_runner", "deepspeed_runner"])
def test_both_runners_refuse_a_schedule_shorter_than_the_run(deepspeed, tmp_path):
    """The tiny demo's schedule ends at its 10 epochs; 20 epochs from the command line is refused before
    the first iteration, by the runner and by the ``--deepspeed`` runner."""
    args = [str(PACKAGE_CONFIGS / "sa2va_tiny_demo.py"), "--work-dir", str(tmp_path)]
    if deepspeed:
        args += ["--deepspeed", "tests/engine/configs/ds_cpu_zero0.json"]
    proc = run_train(*args, "--cfg-options", "train_cfg.max_epochs=20", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert (
        "ScheduleError: param_scheduler ends at iteration 100 (LinearLR at 5, CosineAnnealingLR at 100)"
        in out
    )
    assert "the run trains 200 iterations (10 per epoch)" in out
    assert "Iter(train)" not in out
