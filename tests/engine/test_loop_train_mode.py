"""``Sa2VATrainLoop`` sets training mode once at the start and again after each validation, not every
iteration (mmengine's loops walk every module each iteration: 11 ms per iteration for Sa2VA-4B on an H100,
bench/records/speed_s11); every module trains at every iteration all the same."""

from __future__ import annotations

from mmengine.hooks import Hook

from projects.sa2va.engine.runner import Sa2VARunner
from tests.tiny import tiny_demo_run_cfg


class ModeRecorder(Hook):
    """Records, before each training iteration, whether every module of the model is in training mode."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.modes.append(all(m.training for m in runner.model.modules()))


def test_every_module_trains_at_every_iteration_with_one_train_call_per_phase(tmp_path) -> None:
    cfg = tiny_demo_run_cfg(
        tmp_path / "work", ["Image_01L.jpg", "Image_01R.jpg"], max_iters=4, val_images=["Image_11L.jpg"]
    )
    cfg.train_cfg.val_interval = 2
    runner = Sa2VARunner.from_cfg(cfg)
    recorder = ModeRecorder()
    runner.register_hook(recorder)
    # as from_pretrained leaves a loaded transformers model: in eval mode inside a model in training mode
    runner.model.mllm.eval()
    assert runner.model.training and not runner.model.mllm.training
    calls = []
    real_train = runner.model.train
    runner.model.train = lambda mode=True: calls.append(mode) or real_train(mode)
    runner.train()
    assert recorder.modes == [True] * 4  # iterations 1-2, validation, iterations 3-4
    # train() at the start and after the validation at iteration 2; eval() (= train(False)) for each of the
    # two validations (iterations 2 and 4)
    assert calls == [True, False, True, False]
