"""tools/predict.py and tools/test.py end to end (subprocesses) with the tiny Qwen3-VL config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "projects/sa2va/configs/sa2va_tiny_qwen3vl_demo.py"
IMAGE = ROOT / "data/chase_db1/images/Image_01L.jpg"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A trainable-weights checkpoint of the tiny Qwen3-VL model (its random init, seed 0)."""
    torch.manual_seed(0)
    model = BUILDER.build(Config.fromfile(str(CFG)).model)
    path = tmp_path_factory.mktemp("qwen3vl") / "iter_1.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_predict_tool_on_a_qwen3vl_model(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    r = _run(
        "predict.py",
        *("--config", str(CFG), "--checkpoint", str(checkpoint), "--images", str(IMAGE)),
        *("--prompt", "Please segment the blood vessel.", "--out-dir", str(out), "--max-new-tokens", "4"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    preds = json.loads((out / "predictions.json").read_text())
    assert "Image_01L" in json.dumps(preds)
    assert (out / "Image_01L_overlay.png").is_file()


@pytest.mark.slow
def test_test_tool_on_a_qwen3vl_model(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    r = _run("test.py", str(CFG), str(checkpoint), "--out-dir", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["n_queries"] == 8  # the 8 test images of the bundled sample
    for key in ("at_0.5", "at_best"):
        assert np.isfinite(report[key]["dice"]), key


def test_demo_app_answers_with_a_qwen3vl_model(checkpoint: Path) -> None:
    """The demo's predictor and request handling (as tools/demo_app.py builds them), without HTTP."""
    from projects.sa2va.app.server import DemoApp
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    app = DemoApp(Sa2VAPredictor.from_config(CFG, checkpoint), samples_dir=IMAGE.parent, max_new_tokens=4)
    image = app.decode_image(app.sample_bytes(IMAGE.name), IMAGE.name)
    answer = app.predict(image, app.check_prompt("Please segment the blood vessel."))
    assert (answer["width"], answer["height"]) == (512, 512)
    assert len(answer["probs"]) == answer["text"].count("[SEG]")
