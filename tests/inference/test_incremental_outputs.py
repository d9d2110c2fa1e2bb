"""tools/predict.py writes every image's outputs as it goes; --skip-existing resumes a killed run.

The overfit tiny model of ``conftest.py`` answers ``Sure, [SEG].``, so every image has a mask, a
probability map and an overlay. A run is "killed" by making ``Sa2VAPredictor.predict`` raise on its
third call (batch size 1: the third image).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from projects.sa2va.inference.predictor import Sa2VAPredictor

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_CFG = ROOT / "projects/sa2va/configs/_base_/model_tiny.py"
IMAGES = ROOT / "data/chase_db1/images"
NAMES = ["Image_01L.jpg", "Image_01R.jpg", "Image_02L.jpg"]


def load_predict_tool():
    spec = importlib.util.spec_from_file_location("tool_predict", ROOT / "tools/predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs(folder: Path) -> dict[str, bytes]:
    """Every PNG of a prediction folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


class CountingPredict:
    """Wraps ``Sa2VAPredictor.predict``: counts calls and raises on call ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.calls = 0
        self.real = Sa2VAPredictor.predict

    def install(self, monkeypatch) -> None:
        def predict(predictor, images, prompts, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("simulated crash")
            return self.real(predictor, images, prompts, **kwargs)

        monkeypatch.setattr(Sa2VAPredictor, "predict", predict)


@pytest.fixture(scope="module")
def setup(overfit, tmp_path_factory):
    """A checkpoint of the overfit model, the argv of a run on three images, and a clean full run."""
    tmp = tmp_path_factory.mktemp("incremental")
    ckpt = tmp / "iter_1.pth"
    torch.save({"state_dict": overfit.predictor.model.state_dict()}, ckpt)
    argv = [
        "--config", str(TINY_MODEL_CFG), "--checkpoint", str(ckpt),
        "--images", *[str(IMAGES / n) for n in NAMES], "--threshold", "0.3",
        "--max-tiles", str(overfit.max_tiles), "--cfg-options", "model.lm_loss_weight=1.0",
    ]  # fmt: skip
    clean = tmp / "clean"
    assert load_predict_tool().main([*argv, "--out-dir", str(clean)]) == 0
    return argv, clean, ckpt


def test_killed_run_keeps_its_images_and_skip_existing_redoes_only_the_rest(
    setup, tmp_path, monkeypatch, capsys
):
    argv, clean, _ = setup
    reference = outputs(clean)
    assert len(reference) == 3 * 3  # mask, prob and overlay of each image (one [SEG] each)
    out = tmp_path / "out"
    crash = CountingPredict(fail_at=3)
    crash.install(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_predict_tool().main([*argv, "--out-dir", str(out)])
    # The first two images are on disk, complete and equal to the clean run's; the third is absent.
    kept = outputs(out)
    assert set(kept) == {n for n in reference if not n.startswith("Image_02L")}
    assert all(kept[n] == reference[n] for n in kept)
    assert not (out / "predictions.json").exists()
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["Image_01L", "Image_01R"]
    assert not list(out.glob(".*.tmp"))  # no half-written file left
    # A record whose file was altered afterwards is not trusted; a torn last line is ignored.
    (out / "Image_01R_prob0.png").write_bytes(b"not the recorded file")
    with open(out / "predictions.jsonl", "a") as f:
        f.write(lines[0][: len(lines[0]) // 2])
    capsys.readouterr()

    again = CountingPredict()
    again.install(monkeypatch)
    assert load_predict_tool().main([*argv, "--out-dir", str(out), "--skip-existing"]) == 0
    assert again.calls == 2  # Image_01R (altered file) and Image_02L; Image_01L reused
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "3/3" in err  # the progress bar, on stderr
    assert outputs(out) == reference  # byte for byte
    resumed = json.loads((out / "predictions.json").read_text())
    full = json.loads((clean / "predictions.json").read_text())
    assert (resumed.pop("reused"), full.pop("reused")) == (1, 0)
    assert resumed == full

    # Everything intact: nothing is predicted and no model is built.
    monkeypatch.setattr(Sa2VAPredictor, "from_config", None)
    assert load_predict_tool().main([*argv, "--out-dir", str(out), "--skip-existing"]) == 0
    assert again.calls == 2
    assert json.loads((out / "predictions.json").read_text())["reused"] == 3


def test_skip_existing_refuses_other_settings(setup, tmp_path, overfit, capsys):
    argv, clean, ckpt = setup
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    before = outputs(out)
    tool = load_predict_tool()
    other = [a if a != "0.3" else "0.4" for a in argv]
    assert tool.main([*other, "--out-dir", str(out), "--skip-existing"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "threshold: stored 0.3, now 0.4" in err, err
    assert tool.main([*argv, "--out-dir", str(out), "--skip-existing", "--tile", "on"]) == 2
    assert "tile: stored 'off', now 'on'" in capsys.readouterr().err  # options of other tools too
    # Another checkpoint (one tensor changed) at the same path.
    state = {k: v.clone() for k, v in overfit.predictor.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] += 1.0
    changed = tmp_path / ckpt.name
    torch.save({"state_dict": state}, changed)
    moved = [str(changed) if a == str(ckpt) else a for a in argv]
    assert tool.main([*moved, "--out-dir", str(out), "--skip-existing"]) == 2
    assert "checkpoint: stored" in capsys.readouterr().err
    assert outputs(out) == before and (out / "predictions.json").exists()  # nothing touched
    # Records without a settings file cannot be checked: refused too.
    (out / "run_settings.json").unlink()
    assert tool.main([*argv, "--out-dir", str(out), "--skip-existing"]) == 2
    assert "no settings file" in capsys.readouterr().err
