"""DataWaitHook: one warning when the loop waits for its batches more than a share of the time, with the
measured times and the setting to raise; none below the share, in the skipped start, or on CPU by default.
A real tiny run with slow samples logs it; the runner registers the hook by default."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mmengine.logging import MessageHub

from projects.sa2va.engine.hooks import DataWaitHook, needed_workers
from projects.sa2va.engine.runner import Sa2VARunner
from tests.tiny import slow_samples, tiny_demo_run_cfg


class Logger:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def drive(
    hook: DataWaitHook, times: list[tuple[float, float]], workers: int = 4, loop_wait: bool = True
) -> Logger:
    """Run the hook over iterations with these ``(wait, time)`` values, as the loop does: the wait is the
    loop's ``batch_wait`` (``loop_wait``; mmengine's ``data_time`` is then 10 s, a checkpoint save after the
    iteration timer) or, for a loop without it, ``data_time``."""
    hub = MessageHub.get_instance(f"data-wait-{id(hook)}-{loop_wait}")
    loader = SimpleNamespace(num_workers=workers)
    loop = SimpleNamespace(batch_wait=0.0) if loop_wait else SimpleNamespace()
    runner = SimpleNamespace(
        rank=0, iter=0, message_hub=hub, logger=Logger(), train_dataloader=loader, train_loop=loop
    )
    hook.before_train(runner)
    for i, (wait, time_) in enumerate(times):
        runner.iter = i
        if loop_wait:
            loop.batch_wait = wait
        hub.update_scalar("train/data_time", 10.0 if loop_wait else wait)
        hub.update_scalar("train/time", time_)
        hook.after_train_iter(runner, i)
    return runner.logger


@pytest.mark.parametrize("loop_wait", [True, False], ids=["batch_wait", "data_time"])
def test_warns_once_above_the_share_with_the_times(loop_wait) -> None:
    hook = DataWaitHook(share=0.2, window=4, skip=2, cpu=True)
    times = [(5.0, 6.0)] * 2  # the skipped start: large waits do not count
    times += [(0.1, 1.0)] * 4  # 10 %: no warning
    times += [(0.3, 1.0), (0.5, 1.0), (0.1, 1.0), (0.3, 1.0)]  # iterations 7-10: 30 %
    times += [(0.9, 1.0)] * 8  # once only
    logger = drive(hook, times, loop_wait=loop_wait)
    assert len(logger.warnings) == 1, logger.warnings
    msg = logger.warnings[0]
    assert "waited for its batches 30% of iterations 7-10 (0.300 s of 1.000 s per iteration)" in msg
    assert "the 4 loader worker(s)" in msg and "Raise train_dataloader.num_workers to at least 6" in msg


def test_quiet_below_the_share_and_on_cpu_by_default() -> None:
    # drive() sets data_time to 10 s (a checkpoint save after the timer): the loop's batch_wait is what counts
    assert drive(DataWaitHook(share=0.2, window=4, skip=0, cpu=True), [(0.19, 1.0)] * 12).warnings == []
    assert drive(DataWaitHook(share=0.2, window=4, skip=0), [(0.9, 1.0)] * 12).warnings == []  # no CUDA


@pytest.mark.parametrize(
    ("workers", "waited", "took", "needed"),
    [
        (4, 0.3, 1.0, 6),  # 4 workers at the pace of 1.0 s, the model's 0.7 s: 4 / 0.7 = 5.7
        (4, 0.1138, 0.3975, 6),  # bench/records/speed_s12, Sa2VA-1B compiled, 4 workers (8 kept up)
        (4, 0.5, 1.0, 8),  # exactly twice the rate
        (8, 0.2, 1.0, 10),
        (1, 0.21, 1.0, 2),  # one more at least
        (2, 0.99, 1.0, 8),  # nearly all waiting: at most 4x
    ],
)
def test_needed_workers_scale_the_rate(workers, waited, took, needed) -> None:
    assert needed_workers(workers, waited, took) == needed


def test_no_workers_named_as_such() -> None:
    logger = drive(DataWaitHook(window=2, skip=0, cpu=True), [(0.5, 1.0)] * 2, workers=0)
    assert (
        "the training process prepares every batch itself (train_dataloader.num_workers=0)"
        in (logger.warnings[0])
    )


@pytest.mark.parametrize("kwargs", [dict(share=0), dict(share=1.5), dict(window=0), dict(skip=-1)], ids=str)
def test_bad_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError, match="DataWaitHook needs"):
        DataWaitHook(**kwargs)


def test_a_slow_data_run_logs_the_warning(tmp_path, monkeypatch) -> None:
    slow_samples(monkeypatch, 0.2)
    names = ["Image_01L.jpg", "Image_01R.jpg", "Image_02L.jpg", "Image_02R.jpg"]
    cfg = tiny_demo_run_cfg(tmp_path / "work", names, max_iters=4)
    cfg.custom_hooks = [dict(type="DataWaitHook", share=0.2, window=2, skip=1, cpu=True)]
    runner = Sa2VARunner.from_cfg(cfg)
    hooks = [h for h in runner.hooks if isinstance(h, DataWaitHook)]
    assert len(hooks) == 1 and hooks[0].cpu  # the config's; the default is not added beside it
    runner.train()
    log = next((tmp_path / "work").glob("*/*.log")).read_text()
    assert "the loop waited for its batches" in log and "of iterations 2-3" in log, log[-3000:]
    assert hooks[0].warned


def test_runner_registers_it_by_default(tmp_path) -> None:
    runner = Sa2VARunner.from_cfg(tiny_demo_run_cfg(tmp_path / "work", ["Image_01L.jpg"], max_iters=1))
    assert sum(isinstance(h, DataWaitHook) for h in runner.hooks) == 1
