"""``Sa2VATrainLoop`` sets training mode once at the start and again after each validation, not every
iteration (mmengine's loops walk every module each iteration: 11 ms per iteration for Sa2VA-4B on an H100,
bench/records/speed_s11); every module trains at every iteration all the same."""

from __future__ import annotations

from mmengine.config import Config
from mmengine.hooks import Hook

from projects.sa2va.engine.runner import Sa2VARunner
from tests.tiny import ROOT, annotation_subset

DATA = ROOT / "data/chase_db1"
DEMO = ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"


class ModeRecorder(Hook):
    """Records, before each training iteration, whether every module of the model is in training mode."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.modes.append(all(m.training for m in runner.model.modules()))


def test_every_module_trains_at_every_iteration_with_one_train_call_per_phase(tmp_path) -> None:
    cfg = Config.fromfile(str(DEMO))
    cfg.work_dir = str(tmp_path / "work")
    cfg.train_dataloader.batch_size = 1
    train = annotation_subset(
        DATA / "annotations_train.json", ["Image_01L.jpg", "Image_01R.jpg"], tmp_path / "t.json"
    )
    cfg.train_dataloader.dataset.update(ann_file=train, objects_per_image=1)
    cfg.val_dataloader.dataset.ann_file = annotation_subset(
        DATA / "annotations_test.json", ["Image_11L.jpg"], tmp_path / "v.json"
    )
    cfg.train_cfg.pop("max_epochs")
    cfg.train_cfg.update(max_iters=4, val_interval=2)
    cfg.default_hooks.checkpoint.update(interval=100)
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
