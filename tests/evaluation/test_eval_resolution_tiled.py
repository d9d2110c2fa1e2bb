"""The tiled rows of the resolution ceiling (library and tools/resolution_ceiling.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.annotations import encode_mask_rle
from projects.sa2va.evaluation.resolution import CEILING_MODES, ceiling_dice, ceiling_mask
from projects.sa2va.tiling import tile_windows

REPO = Path(__file__).resolve().parents[2]


def _bands(height: int, width: int, period: int, thick: int) -> np.ndarray:
    """Horizontal lines ``thick`` px thick every ``period`` rows, starting at row 0."""
    mask = np.zeros((height, width), dtype=bool)
    for r in range(0, height, period):
        mask[r : r + thick] = True
    return mask


@pytest.mark.parametrize("kind", ["nearest", "soft"])
def test_image_within_one_window_equals_the_low_mode(kind: str) -> None:
    rng = np.random.default_rng(0)
    gt = rng.random((300, 257)) > 0.9
    tiled = ceiling_mask(gt, f"tiled_{kind}", 64, window=300)
    np.testing.assert_array_equal(tiled, ceiling_mask(gt, f"low_{kind}", 64))


def test_tiled_keeps_4px_lines_that_the_whole_image_grid_loses() -> None:
    """2048 x 2048, window 1024 (starts 0, 512, 1024: multiples of the 4-px grid cell of a window),
    4-px lines every 16 rows: every window's 256 grid holds them exactly, the 2048 -> 256 grid does not."""
    gt = _bands(2048, 2048, 16, 4)
    assert [w.top for w in tile_windows(2048, 2048, 1024, 0.25)][::3] == [0, 512, 1024]
    for kind in ("nearest", "soft"):
        assert ceiling_dice(gt, f"tiled_{kind}", 256, window=1024, overlap=0.25) == 1.0
    assert ceiling_dice(gt, "low_soft", 256) < 0.9
    assert ceiling_dice(gt, "low_nearest", 256) < 0.9


def test_tiled_ceiling_of_thin_random_lines_beats_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    gt = np.zeros((2000, 3000), dtype=bool)
    for _ in range(60):  # 4-px wide slanted segments at random positions (vessels of a large photograph)
        r, c = rng.integers(0, 1900), rng.integers(0, 2800)
        steps = np.arange(100)
        cols = c + (steps * rng.uniform(0.2, 1.0)).astype(int)
        for dc in range(4):
            gt[r + steps, cols + dc] = True
    for kind in ("nearest", "soft"):
        whole = ceiling_dice(gt, f"low_{kind}", 256)
        tiled = ceiling_dice(gt, f"tiled_{kind}", 256, window=1024)
        assert tiled > 2 * whole and tiled > whole + 0.1, (kind, whole, tiled)


def test_bad_tiled_parameters_are_refused() -> None:
    gt = np.zeros((40, 40), dtype=bool)
    with pytest.raises(ValueError, match="overlap"):
        ceiling_mask(gt, "tiled_soft", 8, window=16, overlap=1.0)
    with pytest.raises(ValueError, match="window"):
        ceiling_mask(gt, "tiled_soft", 8, window=0)


def test_tool_prints_the_tiled_rows(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    records = []
    even_line = np.zeros((64, 64), dtype=bool)
    even_line[10, :] = True
    aligned = np.zeros((64, 64), dtype=bool)
    aligned[20:22, :] = True
    for name, mask in (("a.png", even_line), ("b.png", aligned)):
        Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(images / name)
        records.append({"image": name, "text": ["vessel"], "mask": [[encode_mask_rle(mask)]]})
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(records))
    args = [
        str(ann),
        "--images",
        str(images),
        "--low-res",
        "16",
        "--tile-window",
        "32",
        "--tile-overlap",
        "0.25",
    ]
    result = subprocess.run(
        [sys.executable, "tools/resolution_ceiling.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    assert "tiled: window=32 overlap=0.25" in lines[header]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :]}
    assert list(rows) == list(CEILING_MODES)
    # windows start at 0, 16, 32; each window's 16-grid has 2-px cells: row 10 of a.png is only in the
    # first window (local row 10, even): as low_* at 32 on the whole 64-px image; b.png's rows 20-21
    # sit on the grid in every window that holds them: exact.
    assert rows["tiled_nearest"] == [f"{(2 / 3 + 1) / 2:.4f}", f"{2 / 3:.4f}", "1.0000", "2"]
    assert rows["tiled_soft"] == ["0.5000", "0.0000", "1.0000", "2"]
    # the whole 64-px image through the 16 grid loses both lines (4-px cells)
    assert float(rows["low_soft"][0]) < 0.5
    bad = subprocess.run(
        [sys.executable, "tools/resolution_ceiling.py", *args[:3], "--tile-overlap", "1.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "--tile-overlap must be in [0, 1), got 1.5" in bad.stderr
