"""tools/test.py --tile / --flip-tta end to end on the tiny demo config (SAM2 input 256 px: the bundled
512 x 512 images are twice the model input, 3 x 3 windows each)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from projects.sa2va.tiling import num_windows

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/chase_db1"
DEMO = ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"


def _tool():
    spec = importlib.util.spec_from_file_location("tool_test_tiled", ROOT / "tools/test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny demo model as tools/test.py rebuilds it (config seed), saved as a trainable checkpoint."""
    from projects.sa2va.engine.builder import build_model

    model = build_model(Config.fromfile(str(DEMO)), None)
    path = tmp_path_factory.mktemp("tiled_ckpt") / "iter_1.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_test_tool_tiled_with_flip_tta(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    from projects.sa2va.models.sa2va import Sa2VAModel

    records = [r for r in json.loads((DATA / "annotations_test.json").read_text())][:2]
    ann = tmp_path / "two.json"
    ann.write_text(json.dumps(records))
    forwards: list[int] = []
    original = Sa2VAModel.val_step

    def counted(self, data):
        forwards.append(int(data["data"].input_ids.shape[0]))
        return original(self, data)

    monkeypatch.setattr(Sa2VAModel, "val_step", counted)
    out = tmp_path / "eval"
    argv = [str(DEMO), str(checkpoint), "--out-dir", str(out), "--ann-file", str(ann),
            "--image-root", str(DATA / "images"), "--max-overlays", "0",
            "--tile", "auto", "--tile-overlap", "0.25", "--flip-tta"]  # fmt: skip
    assert _tool().main(argv) == 0
    windows = num_windows(512, 256, 0.25) ** 2
    assert windows == 9
    assert sum(forwards) == 2 * 2 * windows  # 2 images, each window and its mirror
    assert max(forwards) <= 4  # windows go through the model in batches of 4
    report = json.loads((out / "report.json").read_text())
    assert report["tiling"] == {"mode": "auto", "window": None, "overlap": 0.25}
    assert report["flip_tta"] is True
    assert report["n_queries"] == 2 and np.isfinite(report["at_0.5"]["dice"])
    states = sorted((out / "records" / "test").glob("*.npz"))
    assert len(states) == 2
    for path in states:
        with np.load(path) as z:
            assert z["shapes"].tolist() == [[512, 512]]  # scored at full resolution
    settings = json.loads((out / "records" / "run_settings.json").read_text())["settings"]
    assert settings["tile"] == "auto" and settings["flip_tta"] is True and settings["tile_overlap"] == 0.25
    # --skip-existing with other tiling settings is refused (the stored masks were computed otherwise)
    with pytest.raises(SystemExit, match="tile"):
        _tool().main([*argv[:-5], "--tile", "off", "--skip-existing"])
