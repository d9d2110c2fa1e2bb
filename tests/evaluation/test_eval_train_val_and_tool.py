"""Validation during a tiny training run (best checkpoint kept) and tools/test.py on that checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.optim import CosineAnnealingLR, LinearLR
from PIL import Image

from projects.sa2va.engine.time_budget import TimeBudgetHook
from projects.sa2va.evaluation.plots import load_scalars
from tests.tiny import annotation_subset

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/chase_db1"
DEMO = ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 iterations of the tiny demo with validation after each: 2 validations, best checkpoint kept."""
    from mmengine.config import Config

    from projects.sa2va.engine.runner import Sa2VARunner

    tmp = tmp_path_factory.mktemp("train")
    train_ann = annotation_subset(
        DATA / "annotations_train.json", ["Image_01L.jpg", "Image_01R.jpg"], tmp / "train.json"
    )
    val_ann = annotation_subset(
        DATA / "annotations_test.json", ["Image_11L.jpg", "Image_12R.jpg"], tmp / "val.json"
    )
    cfg = Config.fromfile(str(DEMO))
    cfg.work_dir = str(tmp / "work")
    cfg.train_dataloader.batch_size = 1
    cfg.train_dataloader.dataset.update(ann_file=train_ann, objects_per_image=1)
    cfg.val_dataloader.dataset.ann_file = val_ann
    cfg.train_cfg.pop("max_epochs")
    cfg.train_cfg.update(max_iters=2, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.update(interval=100)
    runner = Sa2VARunner.from_cfg(cfg)  # what tools/train.py builds (cfg.runner_type)
    runner.train()
    return SimpleNamespace(work_dir=Path(cfg.work_dir), val_ann=val_ann, train_ann=train_ann)


def test_validation_runs_twice_and_keeps_the_best_checkpoint(trained):
    scalars = sorted(trained.work_dir.glob("*/vis_data/scalars.json"))
    assert len(scalars) == 1
    rows = load_scalars(scalars[0])
    val_rows = [r for r in rows if "val/dice" in r]
    assert [r["step"] for r in val_rows] == [1, 2]
    for r in val_rows:
        assert 0.0 <= r["val/dice"] <= r["val/dice_best"] <= 1.0
        assert set(r) >= {"val/iou", "val/cl_dice", "val/dice_best", "val/best_threshold"}
    best = list(trained.work_dir.glob("best_val_dice_best_iter_*.pth"))
    assert len(best) == 1
    best_iter = max(val_rows, key=lambda r: (r["val/dice_best"], -r["step"]))["step"]
    assert best[0].name == f"best_val_dice_best_iter_{best_iter}.pth"
    assert any(trained.work_dir.glob("*/vis_data/events.out.tfevents.*"))  # TensorBoard (installed here)
    log = next(trained.work_dir.glob("*/*.log")).read_text()
    assert "eta:" in log and "Iter(val)" in log
    # Training curves from the work dir.
    assert load_tool("plot_logs").main([str(trained.work_dir)]) == 0
    assert (trained.work_dir / "training_curves.png").stat().st_size > 0


def test_tool_evaluates_the_best_checkpoint_and_reproduces_the_logged_dice(trained, tmp_path):
    best = next(trained.work_dir.glob("best_val_dice_best_iter_*.pth"))
    logged = [
        r for r in load_scalars(next(trained.work_dir.glob("*/vis_data/scalars.json"))) if "val/dice" in r
    ]
    step = int(best.stem.rsplit("_", 1)[-1])
    logged = next(r for r in logged if r["step"] == step)
    out = tmp_path / "eval"
    argv = [str(DEMO), str(best), "--out-dir", str(out), "--ann-file", trained.val_ann,
            "--val-ann-file", trained.train_ann, "--max-overlays", "1"]  # fmt: skip
    assert load_tool("test").main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert names >= {
        "report.json",
        "per_image.csv",
        "best_threshold.json",
        "pr_curve.png",
        "overlay_grid.png",
    }
    assert "training_curves.png" in names  # the checkpoint's work dir has scalars.json
    assert len(list((out / "overlays").glob("*.png"))) == 1
    report = json.loads((out / "report.json").read_text())
    thr = json.loads((out / "best_threshold.json").read_text())
    assert thr["chosen_on"].startswith("validation set") and trained.train_ann in thr["chosen_on"]
    assert report["best_threshold"] == pytest.approx(thr["threshold"])
    assert report["validation"]["val/best_threshold"] == pytest.approx(thr["threshold"])
    # Same model (random frozen parts rebuilt from the config seed) and same images as the logged validation.
    assert report["at_0.5"]["dice"] == pytest.approx(logged["val/dice"], abs=1e-6)
    assert report["oracle_on_test"]["dice"] == pytest.approx(logged["val/dice_best"], abs=1e-6)
    assert report["n_queries"] == 2
    lines = (out / "per_image.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("Image_11L.jpg|0|blood vessel,")


def test_tool_without_val_set_says_the_threshold_came_from_the_test_set(trained, tmp_path):
    best = next(trained.work_dir.glob("best_val_dice_best_iter_*.pth"))
    out = tmp_path / "eval"
    argv = [str(DEMO), str(best), "--out-dir", str(out), "--ann-file", trained.val_ann, "--max-overlays", "0"]
    assert load_tool("test").main(argv) == 0
    thr = json.loads((out / "best_threshold.json").read_text())
    assert "test) set itself" in thr["chosen_on"]
    report = json.loads((out / "report.json").read_text())
    assert report["validation"] is None
    assert report["at_best"]["dice"] == pytest.approx(report["oracle_on_test"]["dice"])


def test_time_budget_hook_shortens_the_run_and_its_cosine():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    warm = LinearLR(opt, start_factor=0.1, by_epoch=False, begin=0, end=5)
    cos = CosineAnnealingLR(opt, eta_min=0.0, by_epoch=False, begin=5, end=1000)

    class Loop:
        _max_iters = 1000
        max_iters = property(lambda self: self._max_iters)

    loop = Loop()
    logs = []
    logger = SimpleNamespace(info=logs.append, warning=logs.append)
    runner = SimpleNamespace(train_loop=loop, param_schedulers=[warm, cos], logger=logger, iter=0)
    now = [0.0]
    hook = TimeBudgetHook(seconds=1.0, calibrate_at=3, skip=1, reserve=0.0, window=1, clock=lambda: now[0])
    hook.before_train(runner)
    for i, seconds in enumerate((0.5, 0.1, 0.1)):  # half the budget in iteration 1, then 0.1 s/iter
        now[0] += seconds
        runner.iter = i
        hook.after_train_iter(runner, i)
    assert hook.seconds_per_iter == pytest.approx(0.1, abs=0.02)
    assert 6 <= loop._max_iters <= 9  # 3 done + ~0.5 s / 0.1 s
    assert cos.end == loop._max_iters and cos.T_max == loop._max_iters - 5
    assert warm.end == 5  # schedulers that end elsewhere are untouched


def test_tool_scores_inside_the_field_of_view(trained, tmp_path):
    """--fov-masks: whole-image figures unchanged, FOV figures in fov/ and the report's "fov" section;
    an all-ones FOV folder gives the whole-image figures back."""
    best = next(trained.work_dir.glob("best_val_dice_best_iter_*.pth"))
    base = [str(DEMO), str(best), "--ann-file", trained.val_ann, "--val-ann-file", trained.train_ann,
            "--max-overlays", "0"]  # fmt: skip
    assert load_tool("test").main([*base, "--out-dir", str(tmp_path / "plain")]) == 0
    assert load_tool("test").main([*base, "--out-dir", str(tmp_path / "auto"), "--fov-masks", "auto"]) == 0
    plain = json.loads((tmp_path / "plain/report.json").read_text())
    auto = json.loads((tmp_path / "auto/report.json").read_text())
    for key in ("at_0.5", "at_best", "best_threshold", "n_queries"):
        assert auto[key] == plain[key]
    fov = auto["fov"]
    assert fov["source"].startswith("auto: image grey level > 10") and 0.68 < fov["fov_fraction"] < 0.71
    assert fov["threshold_chosen_on"] == f"validation set {trained.train_ann}, inside the FOV"
    assert fov["at_0.5"]["n_queries"] == 2 and fov["at_0.5"]["dice"] >= plain["at_0.5"]["dice"] - 1e-9
    fov_report = json.loads((tmp_path / "auto/fov/report.json").read_text())
    assert (
        fov_report["scored"] == "inside the field of view"
        and fov_report["at_best"]["dice"] == fov["at_best"]["dice"]
    )
    thr = json.loads((tmp_path / "auto/fov/best_threshold.json").read_text())
    assert thr["threshold"] == pytest.approx(fov["threshold"])
    assert len((tmp_path / "auto/fov/per_image.csv").read_text().splitlines()) == 3

    ones = tmp_path / "ones"
    ones.mkdir()
    for name in ("Image_11L", "Image_12R", "Image_01L", "Image_01R"):
        Image.new("L", (512, 512), 255).save(ones / f"{name}_fov.png")
    argv = [
        *base,
        "--out-dir",
        str(tmp_path / "ones_eval"),
        "--fov-masks",
        str(ones),
        "--fov-pattern",
        "{stem}_fov.png",
    ]
    assert load_tool("test").main(argv) == 0
    fov = json.loads((tmp_path / "ones_eval/report.json").read_text())["fov"]
    assert fov["fov_fraction"] == 1.0
    for key in ("dice", "iou", "cl_dice", "precision", "recall"):
        assert fov["at_0.5"][key] == pytest.approx(plain["at_0.5"][key], abs=1e-12)
        assert fov["at_best"][key] == pytest.approx(plain["at_best"][key], abs=1e-12)
    (ones / "Image_12R_fov.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Image_12R.jpg \(expected .*Image_12R_fov.png\)"):
        load_tool("test").main([*argv[:-4], "--out-dir", str(tmp_path / "x"), "--fov-masks", str(ones),
                                "--fov-pattern", "{stem}_fov.png"])  # fmt: skip
