"""prepare_folders / tools/prepare_images.py on instance-ID masks (real 8- and 16-bit PNG files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.instance_ids import read_instance_ids
from projects.sa2va.datasets.prepare import PrepareError, parse_size, prepare_folders, resize_id_array

REPO = Path(__file__).resolve().parents[2]


def test_resize_id_array_keeps_ids_and_their_regions():
    ids = np.zeros((40, 40), dtype=np.int64)
    ids[0:20, 0:20] = 7
    ids[20:40, 20:40] = 300
    small = resize_id_array(ids, 10, 10)
    expected = np.zeros((10, 10), dtype=np.int64)
    expected[0:5, 0:5] = 7
    expected[5:10, 5:10] = 300
    assert np.array_equal(small, expected)
    # a pixel shared by two ids and background goes to the largest share
    mixed = np.array([[1, 1, 2, 0]] * 4, dtype=np.int64)
    assert resize_id_array(mixed, 1, 1).tolist() == [[1]]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "ids").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    ids = np.zeros((80, 120), dtype=np.uint16)
    ids[4:40, 4:60] = 1
    ids[44:76, 64:116] = 1000  # 16-bit id
    Image.fromarray(ids).save(tmp_path / "ids" / "a.png")
    return tmp_path


def test_id_masks_are_resized_per_id_and_written_16_bit(folder: Path):
    out = folder / "out"
    reports = prepare_folders(folder / "images", out, parse_size("60"), id_masks_dirs=[folder / "ids"])
    report = next(r for r in reports if r.kind == "id_mask")
    assert (report.width_after, report.height_after) == (60, 40)
    back = read_instance_ids(out / "ids" / "a.png")
    assert back.shape == (40, 60) and set(np.unique(back).tolist()) == {0, 1, 1000}
    assert np.array_equal(back[2:20, 2:30], np.ones((18, 28)))
    assert report.dice_round_trip > 0.97


def test_an_id_lost_by_the_resize_is_an_error(folder: Path):
    ids = read_instance_ids(folder / "ids" / "a.png").astype(np.uint16)
    ids[60, 10] = 5  # one pixel: gone at a tenth of the size
    Image.fromarray(ids).save(folder / "ids" / "a.png")
    with pytest.raises(PrepareError, match=r"a\.png: id\(s\) \[5\] vanish at 12x8"):
        prepare_folders(folder / "images", folder / "out", parse_size("12"), id_masks_dirs=[folder / "ids"])


def test_prepare_images_tool_takes_id_masks(folder: Path):
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "prepare_images.py"), "--images", str(folder / "images"),
         "--id-masks", str(folder / "ids"), "--size", "60", "--out", str(folder / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ids/a.png: 120x80 -> 60x40" in done.stdout
    assert set(np.unique(read_instance_ids(folder / "out" / "ids" / "a.png")).tolist()) == {0, 1, 1000}
