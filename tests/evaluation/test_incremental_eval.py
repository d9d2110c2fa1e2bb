"""tools/test.py records every sample as it goes; --skip-existing resumes a killed evaluation.

The tiny demo config with a checkpoint of its freshly built model; a run is "killed" by making the
model's ``val_step`` raise on its third call (batch size 1: the third of three test images).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from projects.sa2va.engine import evaluate_checkpoint as evaluate
from tests.tiny import annotation_subset

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/chase_db1"
DEMO = ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"
TEST_NAMES = ["Image_11L.jpg", "Image_11R.jpg", "Image_12L.jpg"]
VAL_NAMES = ["Image_01L.jpg", "Image_01R.jpg"]
FINAL_FILES = ("report.json", "per_image.csv", "best_threshold.json")


def load_test_tool():
    spec = importlib.util.spec_from_file_location("tool_test", ROOT / "tools/test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingBuild:
    """Wraps ``evaluate_checkpoint.build_model`` (the model builder of ``tools/test.py``): the model's
    ``val_step`` counts its calls and raises on call ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at, self.calls, self.builds = fail_at, 0, 0
        self.real = evaluate.build_model

    def __call__(self, *args, **kwargs):
        self.builds += 1
        model = self.real(*args, **kwargs)
        step = model.val_step

        def val_step(batch):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("simulated crash")
            return step(batch)

        model.val_step = val_step
        return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint of the tiny demo's model (seeded build), annotation subsets, a clean full run."""
    from projects.sa2va.engine.builder import build_model, load_config

    tmp = tmp_path_factory.mktemp("incremental_eval")
    model = build_model(load_config(DEMO), None)
    ckpt = tmp / "iter_1.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    ann = annotation_subset(DATA / "annotations_test.json", TEST_NAMES, tmp / "test.json")
    val = annotation_subset(DATA / "annotations_train.json", VAL_NAMES, tmp / "val.json")
    argv = [str(DEMO), str(ckpt), "--ann-file", ann, "--val-ann-file", val, "--max-overlays", "1"]
    clean = tmp / "clean"
    assert load_test_tool().main([*argv, "--out-dir", str(clean)]) == 0
    return argv, clean, ckpt, model


def test_killed_evaluation_keeps_its_samples_and_skip_existing_runs_only_the_rest(
    setup, tmp_path, monkeypatch, capsys
):
    argv, clean, _, _ = setup
    out = tmp_path / "out"
    # 2 validation samples, then the 1st test sample; the crash is at the 2nd test sample.
    crash = CountingBuild(fail_at=4)
    monkeypatch.setattr(evaluate, "build_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_test_tool().main([*argv, "--out-dir", str(out)])
    records = out / "records"
    val_lines = [json.loads(x) for x in (records / "val.jsonl").read_text().splitlines()]
    test_lines = [json.loads(x) for x in (records / "test.jsonl").read_text().splitlines()]
    assert [x["record"]["image"] for x in val_lines] == VAL_NAMES
    assert [x["record"]["image"] for x in test_lines] == TEST_NAMES[:1]
    assert len(list((records / "test").glob("*.npz"))) == 1 and not (out / "report.json").exists()
    # The per-image line holds its metrics at 0.5, equal to the clean run's per_image.csv row.
    row = test_lines[0]["record"]["at_0.5"][0]
    csv = (clean / "per_image.csv").read_text().splitlines()
    header = csv[0].split(",")
    clean_row = dict(zip(header, next(x for x in csv if x.startswith(row["key"])).split(",")))
    assert row["key"] == "Image_11L.jpg|0|blood vessel"
    assert row["dice"] == pytest.approx(float(clean_row["dice_at_0.5"]), abs=1e-6)
    # An altered state file is not trusted (the validation sample of Image_01R is run again).
    (records / val_lines[1]["record"]["state"]).write_bytes(b"corrupt")
    capsys.readouterr()

    again = CountingBuild()
    monkeypatch.setattr(evaluate, "build_model", again)
    assert load_test_tool().main([*argv, "--out-dir", str(out), "--skip-existing"]) == 0
    assert again.calls == 1 + 2  # Image_01R (validation), Image_11R and Image_12L (test)
    err = capsys.readouterr().err
    assert "test: 100%" in err and "3/3" in err and "val: 100%" in err  # progress bars on stderr
    for name in FINAL_FILES[1:]:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    resumed = json.loads((out / "report.json").read_text())
    full = json.loads((clean / "report.json").read_text())
    assert resumed.pop("reused") == {"validation": 1, "test": 1}
    assert full.pop("reused") == {"validation": 0, "test": 0}
    assert resumed == full  # metric for metric

    # Everything recorded: no model is built, the report is the same.
    final = CountingBuild()
    monkeypatch.setattr(evaluate, "build_model", final)
    assert load_test_tool().main([*argv, "--out-dir", str(out), "--skip-existing"]) == 0
    assert final.builds == 0
    report = json.loads((out / "report.json").read_text())
    assert report.pop("reused") == {"validation": 2, "test": 3} and report == full


def test_skip_existing_refuses_another_checkpoint_or_precision(setup, tmp_path):
    argv, clean, ckpt, model = setup
    stored = json.loads((clean / "records/run_settings.json").read_text())["settings"]
    assert set(stored) >= {"config", "checkpoint", "device", "precision", "tiling", "flip_tta"}
    assert stored["precision"] == "fp32" and stored["device"] == "cpu"
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] += 1.0
    other = tmp_path / ckpt.name
    torch.save({"state_dict": state}, other)
    with pytest.raises(SystemExit, match=r"other settings[\s\S]*checkpoint: stored"):
        load_test_tool().main([argv[0], str(other), *argv[2:], "--out-dir", str(out), "--skip-existing"])
    with pytest.raises(SystemExit, match=r"config: stored"):
        load_test_tool().main(
            [
                *argv,
                "--out-dir",
                str(out),
                "--skip-existing",
                "--cfg-options",
                "val_dataloader.dataset.processor.image_processor.max_tiles=3",
            ]
        )
    with pytest.raises(SystemExit, match=r"tile: stored 'off', now 'on'"):
        load_test_tool().main([*argv, "--out-dir", str(out), "--skip-existing", "--tile", "on"])
    assert all((out / n).read_bytes() == (clean / n).read_bytes() for n in FINAL_FILES)  # untouched
