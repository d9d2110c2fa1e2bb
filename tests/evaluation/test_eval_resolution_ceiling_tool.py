"""tools/resolution_ceiling.py end to end on a tiny dataset written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

annotations = pytest.importorskip("projects.sa2va.datasets.annotations")

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(images / name)
    even_line = np.zeros((64, 64), dtype=bool)
    even_line[10, :] = True  # 1-px line on an even row: low_nearest 2/3, low_soft 0 at low_res 32
    aligned = np.zeros((64, 64), dtype=bool)
    aligned[20:22, :] = True  # 2-px line aligned with the 2x grid: 1.0 in every mode
    records = [
        {"image": "a.png", "text": ["vessel"], "mask": [[annotations.encode_mask_rle(even_line)]]},
        {"image": "b.png", "text": ["vessel"], "mask": [[annotations.encode_mask_rle(aligned)]]},
    ]
    ann = root / "annotations.json"
    ann.write_text(json.dumps(records))
    return ann


def test_tool_prints_table(tmp_path: Path) -> None:
    ann = _dataset(tmp_path / "data")
    images = tmp_path / "data" / "images"
    result = subprocess.run(
        [sys.executable, "tools/resolution_ceiling.py", str(ann), "--images", str(images), "--low-res", "32"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["low_nearest"] == [f"{(2 / 3 + 1) / 2:.4f}", f"{2 / 3:.4f}", "1.0000", "2"]
    assert rows["low_soft"] == ["0.5000", "0.0000", "1.0000", "2"]
    assert rows["full"] == ["1.0000", "1.0000", "1.0000", "2"]
