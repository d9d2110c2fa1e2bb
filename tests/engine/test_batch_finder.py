"""The batch finder's search, plan and config edits (projects/sa2va/engine/batch_finder.py), on the CPU.

The search is driven by a step that raises ``torch.OutOfMemoryError`` above a threshold, as a GPU does, so
the back-off, the bisection and the record of every trial are exercised; one test runs the real trial step
of the tiny demo with an out-of-memory error injected after its backward pass.
"""

from __future__ import annotations

import json

import pytest
import torch

from projects.sa2va.engine import batch_finder
from projects.sa2va.engine.batch_finder import (
    AutoBatchError,
    BatchPlan,
    Measure,
    apply_batch_plan,
    batch_cfg_options,
    divisors,
    is_out_of_memory,
    plan_batch,
    recorded_plan,
    search_batch,
)
from projects.sa2va.engine.builder import load_config
from projects.sa2va.engine.config_file import PACKAGE_CONFIGS

DEMO = PACKAGE_CONFIGS / "sa2va_tiny_demo.py"


class FakeDevice:
    """A step that fits up to ``limit`` samples: ``peak = per_sample x B`` bytes, else out of memory."""

    def __init__(
        self, limit: int, per_sample: int = 1000, reserve: int = 0, error: type = torch.OutOfMemoryError
    ):
        self.limit, self.per_sample, self.reserve, self.error = limit, per_sample, reserve, error
        self.calls: list[int] = []
        self.cleanups = 0

    def __call__(self, batch: int) -> Measure:
        self.calls.append(batch)
        if batch > self.limit:
            if self.error is RuntimeError:
                raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ...")
            raise self.error(f"CUDA out of memory. Tried to allocate {batch} GiB")
        return Measure(self.per_sample * batch, self.reserve, {"b": batch})

    def cleanup(self) -> None:
        self.cleanups += 1


def run(device: FakeDevice, **kwargs):
    return search_batch(device, cleanup=device.cleanup, **kwargs)


def test_doubles_until_out_of_memory_then_bisects_and_records_every_trial():
    device = FakeDevice(limit=13)
    seen = []
    result = run(device, on_trial=seen.append)
    assert result.largest_fit == 13 and result.first_failure == 14
    assert [t.batch for t in result.trials] == [1, 2, 4, 8, 16, 12, 14, 13] == device.calls
    assert [t.outcome for t in result.trials] == ["ok"] * 4 + ["oom", "ok", "oom", "ok"]
    assert seen == result.trials
    assert device.cleanups == 8  # memory freed after every trial, out of memory or not
    oom = result.trials[4]
    assert oom.peak_bytes is None and oom.error == "CUDA out of memory. Tried to allocate 16 GiB"
    ok = result.trials[-1]
    assert ok.peak_bytes == 13000 and ok.details == {"b": 13} and ok.seconds >= 0
    assert result.reason == "batch 14 ran out of memory"


def test_without_bisection_stops_at_the_last_doubling():
    result = run(FakeDevice(limit=13), bisect=False)
    assert result.largest_fit == 8 and [t.batch for t in result.trials] == [1, 2, 4, 8, 16]


def test_a_start_that_does_not_fit_is_halved_then_bisected_upwards():
    result = run(FakeDevice(limit=5), start=32)
    assert [t.batch for t in result.trials] == [32, 16, 8, 4, 6, 5]
    assert result.largest_fit == 5 and result.first_failure == 6


def test_nothing_fits():
    result = run(FakeDevice(limit=0))
    assert result.largest_fit is None and result.first_failure == 1
    assert [t.outcome for t in result.trials] == ["oom"]
    assert "batch 1, the smallest tried, does not fit" in result.reason


def test_runtime_error_saying_out_of_memory_counts_other_errors_propagate():
    result = run(FakeDevice(limit=3, error=RuntimeError))
    assert [t.batch for t in result.trials] == [1, 2, 4, 3]
    assert result.largest_fit == 3 and result.trials[2].error == "CUDA error: out of memory"
    device = FakeDevice(limit=3, error=ValueError)
    with pytest.raises(ValueError, match="Tried to allocate 4 GiB"):
        run(device)
    assert device.cleanups == 3  # also after the failing trial
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: Out Of Memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(MemoryError("host"))


def test_the_budget_backs_off_like_out_of_memory():
    # peak 1000/sample + reserve 500: batch 8 uses 8500 (fits 9000), batch 9 uses 9500 (over).
    result = run(FakeDevice(limit=100, reserve=500), budget_bytes=9000)
    assert result.largest_fit == 8
    assert [(t.batch, t.outcome) for t in result.trials] == [
        (1, "ok"), (2, "ok"), (4, "ok"), (8, "ok"), (16, "over_budget"), (12, "over_budget"),
        (10, "over_budget"), (9, "over_budget"),
    ]  # fmt: skip
    assert result.trials[4].peak_bytes == 16000 and result.trials[4].reserve_bytes == 500
    assert result.reason == "batch 9 is over the budget"


def test_max_batch_caps_the_search():
    result = run(FakeDevice(limit=10**6), max_batch=20)
    assert [t.batch for t in result.trials] == [1, 2, 4, 8, 16, 20]
    assert result.largest_fit == 20 and result.first_failure is None
    assert result.reason == "reached the largest batch allowed (20)"


def test_candidates_only_divisors_are_tried():
    result = run(FakeDevice(limit=23), candidates=divisors(32))
    assert [t.batch for t in result.trials] == [1, 2, 4, 8, 16, 32]
    assert result.largest_fit == 16
    result = run(FakeDevice(limit=5), candidates=divisors(36), start=36)
    assert [t.batch for t in result.trials] == [36, 18, 9, 4, 6] and result.largest_fit == 4
    assert divisors(12) == [1, 2, 3, 4, 6, 12]


def test_no_out_of_memory_signal_and_no_cap_does_not_search():
    device = FakeDevice(limit=10**6)
    result = run(device, oom_signal=False)
    assert not result.searched and result.largest_fit is None and device.calls == []
    assert "cannot search" in result.reason
    assert run(FakeDevice(limit=10**6), oom_signal=False, max_batch=4).largest_fit == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="start must be >= 1"):
        search_batch(FakeDevice(1), start=0)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        search_batch(FakeDevice(1), max_batch=0)


# ------------------------------------------------------------------------------------------- plans
def test_exact_plan_keeps_the_global_batch():
    # Reference recipe: 2 per GPU x 16 accumulation x 8 GPUs = 256.
    plan = plan_batch(20, 2, 16, world_size=8)
    assert plan == BatchPlan(16, 2, 256, 256, True, plan.note)
    assert "batch 20 fits but does not divide 32" in plan.note and "largest divisor 16" in plan.note
    assert plan_batch(16, 2, 16, 8).note == ""
    plan = plan_batch(64, 2, 16, 1)
    assert (plan.batch_size, plan.accumulative_counts, plan.global_batch) == (32, 1, 32)
    assert "more than the config's 32" in plan.note
    plan = plan_batch(16, 2, 17, 1)  # 34 = 2 x 17
    assert (plan.batch_size, plan.accumulative_counts, plan.global_batch_kept) == (2, 17, True)
    for fit in range(1, 40):
        for bs, acc, world in ((2, 16, 1), (4, 3, 2), (1, 7, 8)):
            p = plan_batch(fit, bs, acc, world)
            assert p.batch_size * p.accumulative_counts * world == bs * acc * world == p.global_batch
            assert p.batch_size <= fit


def test_largest_plan_says_when_the_global_batch_changes():
    plan = plan_batch(20, 2, 16, world_size=2, policy="largest")
    assert (plan.batch_size, plan.accumulative_counts, plan.global_batch) == (20, 2, 80)
    assert plan.config_global_batch == 64 and not plan.global_batch_kept
    assert plan.note.startswith("GLOBAL BATCH CHANGED: 20 x accumulative_counts 2 x 2 rank(s) = 80")
    plan = plan_batch(8, 2, 16, world_size=2, policy="largest")
    assert (plan.batch_size, plan.accumulative_counts, plan.global_batch_kept, plan.note) == (8, 4, True, "")
    assert plan_batch(64, 2, 16, policy="largest").accumulative_counts == 1


def test_no_fit_keeps_the_config_and_bad_values_are_refused():
    plan = plan_batch(None, 2, 16, 4)
    assert (plan.batch_size, plan.accumulative_counts, plan.global_batch) == (2, 16, 128)
    with pytest.raises(ValueError, match="policy"):
        plan_batch(4, 2, 16, policy="biggest")
    with pytest.raises(ValueError, match="accumulative_counts must be >= 1, got 0"):
        plan_batch(4, 2, 0)


def test_apply_plan_sets_the_config_and_a_length_grouped_sampler():
    cfg = load_config(DEMO)
    cfg.train_dataloader.sampler = dict(cfg.length_grouped_sampler)
    plan = plan_batch(4, 2, 4)
    apply_batch_plan(cfg, plan)
    assert cfg.train_dataloader.batch_size == 4 and cfg.optim_wrapper.accumulative_counts == 2
    assert cfg.train_dataloader.sampler.batch_size == 4
    assert batch_cfg_options(plan, cfg) == [
        "train_dataloader.batch_size=4",
        "optim_wrapper.accumulative_counts=2",
        "train_dataloader.sampler.batch_size=4",
    ]
    assert batch_cfg_options(plan, load_config(DEMO)) == batch_cfg_options(plan, cfg)[:2]


def test_recorded_plan_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "auto_batch.json"
    path.write_text(
        json.dumps(dict(batch_size=4, accumulative_counts=2, global_batch=8, config_global_batch=8))
    )
    assert recorded_plan(path).batch_size == 4 and recorded_plan(path).global_batch_kept
    path.write_text(
        json.dumps(dict(batch_size=4, accumulative_counts=0, global_batch=8, config_global_batch=8))
    )
    with pytest.raises(
        AutoBatchError, match=r"auto_batch.json: `accumulative_counts` must be a positive integer, got 0"
    ):
        recorded_plan(path)
    path.write_text("{")
    with pytest.raises(AutoBatchError, match=r"auto_batch\.json: cannot read the recorded batch"):
        recorded_plan(path)


def _record(work, **fields):
    (work / "auto_batch.json").write_text(json.dumps(fields))


def test_a_resumed_run_reuses_the_recorded_batch_without_a_search(tmp_path, monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("searched")

    monkeypatch.setattr(batch_finder, "find_batch_size", no_search)
    cfg = load_config(DEMO, {"optim_wrapper.accumulative_counts": 4, "work_dir": str(tmp_path)})
    _record(tmp_path, batch_size=4, accumulative_counts=2, global_batch=8, config_global_batch=8)
    plan = batch_finder.auto_batch_for_training(cfg, resume="auto")
    assert (plan.batch_size, plan.accumulative_counts) == (4, 2)
    assert cfg.train_dataloader.batch_size == 4 and cfg.optim_wrapper.accumulative_counts == 2
    # The config changed its global batch since: refused, naming the file.
    cfg = load_config(DEMO, {"work_dir": str(tmp_path)})
    with pytest.raises(
        AutoBatchError, match=r"auto_batch\.json was recorded for a global batch of 8, the config now gives 2"
    ):
        batch_finder.auto_batch_for_training(cfg, resume="auto")
    with pytest.raises(
        AutoBatchError, match="--auto-batch supports --launcher none and pytorch, not 'slurm'"
    ):
        batch_finder.auto_batch_for_training(cfg, launcher="slurm")


# ---------------------------------------------------------------------------------- the real step
def test_real_tiny_step_recovers_from_out_of_memory(monkeypatch):
    """The tiny demo's real trial step (in this process); batches above 2 fail after their backward pass
    (gradients made), as an out-of-memory error in the optimiser step would. The trial runner drops the
    half-made state and the next trial runs."""
    real_step = batch_finder.Sa2VATrialRunner._step
    states = []

    def step(self, size):
        states.append(len(self.optim_wrapper.optimizer.state))
        if size > 2:
            batch = self._batch(size)
            with self.optim_wrapper.optim_context(self.model):
                data = self.model.data_preprocessor(batch, True)
                losses = self.model._run_forward(data, mode="loss")
            loss, _ = self.model.parse_losses(losses)
            loss.backward()
            assert any(p.grad is not None for p in self.model.parameters())
            raise torch.OutOfMemoryError(f"injected at batch {size}")
        real_step(self, size)

    monkeypatch.setattr(batch_finder.Sa2VATrialRunner, "_step", step)
    cfg = load_config(DEMO, {"optim_wrapper.accumulative_counts": 2})  # 4 samples per step
    found = batch_finder.find_batch_size(cfg, max_batch=4, in_child=False, candidates=divisors(4))
    assert [(t["batch"], t["outcome"]) for t in found["trials"]] == [(1, "ok"), (2, "ok"), (4, "oom")]
    assert found["largest_fit"] == 2 and found["first_failure"] == 4
    assert found["trials"][2]["error"] == "injected at batch 4"
    assert found["device"] == "cpu" and found["samples_per_rank"] == 20
    # warm-up at batch 1 (no optimiser state yet), then every measured step holds the state
    assert states[0] == 0 and all(s > 0 for s in states[1:])


def test_feature_cache_projection_counts_distinct_records(tmp_path):
    """The tiny demo with the memory cache and 3 repeats of its 20 records: a trial's cache bytes per
    distinct image times 20 distinct images (repeats share one entry) is the projected cache of the run."""
    options = {"model.feature_cache": dict(mode="memory"), "train_dataloader.dataset.repeats": 3}
    cfg = load_config(DEMO, options)
    runner = batch_finder.Sa2VATrialRunner(cfg, torch.device("cpu"))
    try:
        assert (len(runner.dataset), runner.samples_per_rank, runner.distinct_per_rank) == (60, 60, 20)
        measure = runner(4)
        distinct = len({i % 20 for i in runner.order[:4]})
        held = runner.model.feature_cache.memory.bytes
        assert held > 0 and measure.details["feature_cache_trial_bytes"] == held
        assert measure.details["feature_cache_projected_bytes"] == held * 20 // distinct
        assert measure.reserve_bytes == 0 and measure.peak_bytes is None  # the CPU: the cache is host memory
    finally:
        runner.close()
    runner = batch_finder.Sa2VATrialRunner(cfg, torch.device("cpu"), world_size=4)
    try:
        assert (runner.samples_per_rank, runner.distinct_per_rank) == (15, 15)
        measure = runner(2)
        assert measure.details["ddp_bucket_bytes"] == runner.trainable_bytes == measure.reserve_bytes
        assert runner.trainable_bytes == 4 * sum(
            p.numel() for p in runner.model.parameters() if p.requires_grad
        )
    finally:
        runner.close()


def test_auto_batch_with_deepspeed_is_refused(tmp_path):
    from projects.sa2va.engine.launch import train

    with pytest.raises(AutoBatchError, match="--auto-batch with DeepSpeed"):
        train(DEMO, tmp_path, deepspeed="zero2", auto_batch={})
    options = {"optim_wrapper": dict(type="DeepSpeedOptimWrapper", optimizer=dict(type="AdamW", lr=1e-4))}
    with pytest.raises(AutoBatchError, match="--auto-batch with DeepSpeed"):
        train(DEMO, tmp_path, cfg_options=options, auto_batch={})
