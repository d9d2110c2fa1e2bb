"""tools/predict.py --tile / --flip-tta end to end (subprocess) on the overfit tiny model.

The tiny model's SAM2 input is 256 px: the bundled 512 x 512 image is twice the model input, so
``--tile auto`` predicts it in 3 x 3 windows of 256 px.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.sa2va.tiling import num_windows

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/predict.py"
TINY_MODEL_CFG = ROOT / "projects/sa2va/configs/_base_/model_tiny.py"
IMAGES = ROOT / "data/chase_db1/images"
PROMPT = "Please segment the blood vessel."


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_predict_tool_tiled_full_resolution(overfit, tmp_path: Path) -> None:
    p = overfit.predictor
    ckpt = tmp_path / "iter_1.pth"
    torch.save({"state_dict": p.model.state_dict()}, ckpt)
    image = overfit.images["01L"]
    expected = p.predict([image], PROMPT, tiling="auto", flip_tta=True)[0]
    t = float(np.quantile(expected.probs, 0.8))
    out = tmp_path / "out"
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--checkpoint", str(ckpt),
        "--images", str(IMAGES / "Image_01L.jpg"), "--prompt", PROMPT, "--out-dir", str(out),
        "--threshold", str(t), "--max-tiles", str(overfit.max_tiles),
        "--cfg-options", "model.lm_loss_weight=1.0",
        "--tile", "auto", "--tile-overlap", "0.25", "--flip-tta",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    windows = num_windows(512, 256, 0.25) ** 2
    assert windows == 9
    log = re.search(
        r"512x512 image: masks blended from (\d+) forwards over (\d+) windows of 256 px", res.stdout
    )
    assert log is not None, res.stdout[-3000:]
    assert (int(log.group(1)), int(log.group(2))) == (2 * windows, windows)  # each window and its mirror
    entry = json.loads((out / "predictions.json").read_text())["images"][0]
    assert entry["text"] == "Sure, [SEG]." and entry["num_masks"] == 1
    mask = np.asarray(Image.open(out / entry["masks"][0])) == 255
    prob = np.asarray(Image.open(out / entry["probs"][0]))
    assert mask.shape == prob.shape == (512, 512)  # full resolution
    assert (mask != (expected.probs[0] > t)).mean() < 1e-3  # the subprocess rebuilt the same predictor
    settings = json.loads((out / "run_settings.json").read_text())["settings"]
    assert settings["tile"] == "auto" and settings["tile_overlap"] == 0.25 and settings["flip_tta"] is True


def test_predict_tool_refuses_bad_tiling_flags(tmp_path: Path) -> None:
    base = [
        "--config",
        str(TINY_MODEL_CFG),
        "--images",
        str(IMAGES / "Image_01L.jpg"),
        "--out-dir",
        str(tmp_path),
    ]
    for flags, message in (
        (["--tile", "sometimes"], "invalid choice: 'sometimes'"),
        (["--tile", "on", "--tile-overlap", "1"], "--tile-overlap: must be a fraction in [0, 1), got '1'"),
        (["--tile", "on", "--tile-size", "0"], "--tile-size: must be a positive integer (pixels), got '0'"),
    ):
        res = _run(*base, *flags)
        assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert not any(tmp_path.iterdir())
