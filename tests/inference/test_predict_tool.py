"""tools/predict.py end to end (subprocess) with a checkpoint of the overfit tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/predict.py"
TINY_MODEL_CFG = ROOT / "projects/sa2va/configs/_base_/model_tiny.py"
IMAGES = ROOT / "data/chase_db1/images"
PROMPT = "Please segment the blood vessel."


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_predict_tool_end_to_end(overfit, tmp_path: Path) -> None:
    ckpt = tmp_path / "iter_1.pth"
    torch.save({"state_dict": overfit.predictor.model.state_dict()}, ckpt)
    thr_file = tmp_path / "best_threshold.json"
    base = overfit.predictor.predict([overfit.images["01L"]], PROMPT)[0]
    t = float(np.quantile(base.probs, 0.8))
    thr_file.write_text(json.dumps({"threshold": t}))
    out = tmp_path / "out"
    names = ["Image_01L.jpg", "Image_01R.jpg"]
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--checkpoint", str(ckpt),
        "--images", *[str(IMAGES / n) for n in names],
        "--prompt", PROMPT, "--out-dir", str(out), "--threshold-file", str(thr_file),
        "--batch-size", "2", "--max-tiles", str(overfit.max_tiles),
        "--cfg-options", "model.lm_loss_weight=1.0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "predictions.json").read_text())
    assert report["threshold"] == t
    assert [Path(e["image"]).name for e in report["images"]] == names
    for entry in report["images"]:
        stem = Path(entry["image"]).stem
        assert entry["text"] == "Sure, [SEG]."
        assert entry["num_masks"] == 1
        assert entry["masks"] == [f"{stem}_mask0.png"] and entry["probs"] == [f"{stem}_prob0.png"]
        mask = np.asarray(Image.open(out / entry["masks"][0]))
        prob = np.asarray(Image.open(out / entry["probs"][0]))
        overlay = Image.open(out / entry["overlay"])
        assert mask.shape == prob.shape == (512, 512) and overlay.size == (512, 512)
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 < (mask == 255).sum() < mask.size
    # The subprocess rebuilt the same model (seed 0 + checkpoint): same mask as in-process.
    mask0 = np.asarray(Image.open(out / "Image_01L_mask0.png")) == 255
    expected = base.probs[0] > t
    assert (mask0 != expected).mean() < 1e-3


def test_predict_tool_names_an_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--images", str(IMAGES / "Image_01L.jpg"), str(bad),
        "--out-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert res.returncode != 0
    assert str(bad) in res.stderr
    assert not (tmp_path / "out").exists()  # failed before predicting anything
    missing = tmp_path / "nope.jpg"
    res = _run("--config", str(TINY_MODEL_CFG), "--images", str(missing), "--out-dir", str(tmp_path / "o"))
    assert res.returncode != 0 and str(missing) in res.stderr


def test_predict_tool_decodes_every_image_and_refuses_reserved_prompts(tmp_path: Path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((IMAGES / "Image_02L.jpg").read_bytes()[:3000])  # header intact, pixels cut
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--images", str(IMAGES / "Image_01L.jpg"), str(cut),
        "--out-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert res.returncode == 2 and str(cut) in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--images", str(IMAGES / "Image_01L.jpg"),
        "--prompt", "<image> Please segment [SEG]", "--out-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert res.returncode == 2 and "--prompt" in res.stderr and "[SEG]" in res.stderr, res.stderr
