"""The one image reader (``datasets/image_io.py``): exact pixels for every mode, errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    read_image,
    read_image_array,
    read_image_size,
    to_rgb,
)


def grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("fmt", ["tiff", "png"])
def test_16bit_grey_is_scaled_by_the_full_range_not_clipped(tmp_path: Path, fmt: str) -> None:
    values = np.array([[0, 1, 128, 129], [257, 32768, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / f"grey16.{fmt}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    got = read_image_array(path)
    # round(v * 255 / 65535): 0, 0.0039, 0.498, 0.502, 1, 127.50, 254.996, 255
    expected = grey3([[0, 0, 0, 1], [1, 128, 255, 255]])
    np.testing.assert_array_equal(got, expected)


def test_float_image_is_scaled_min_max(tmp_path: Path) -> None:
    values = np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_image_array(path), grey3([[0, 64], [128, 255]]))
    Image.fromarray(np.full((2, 2), 7.5, dtype=np.float32)).save(path)
    np.testing.assert_array_equal(read_image_array(path), grey3(np.zeros((2, 2))))
    Image.fromarray(np.array([[np.nan, 1.0]], dtype=np.float32)).save(path)
    with pytest.raises(ImageReadError, match=r"float\.tif.*NaN"):
        read_image(path)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # H 16, W 32: left half red, right half blue
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: shown rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    got = read_image_array(path)
    assert got.shape == (32, 16, 3)  # upright: the width became the height
    assert read_image_size(path) == (16, 32)  # (width, height) from the header, as read
    with Image.open(path) as im:
        raw = np.asarray(im.convert("RGB"))  # as stored, orientation ignored
    np.testing.assert_array_equal(got, np.rot90(raw, k=-1))  # exactly the stored pixels, turned
    assert got[2, 8, 0] > 240 and got[2, 8, 2] < 15  # the left (red) half is now on top
    assert got[29, 8, 2] > 240 and got[29, 8, 0] < 15


def test_rgba_drops_alpha_keeping_the_colours(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128]], [[70, 80, 90, 255], [1, 2, 3, 7]]], dtype=np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_image_array(path), rgba[:, :, :3])


def test_palette_gif_is_expanded_to_its_colours(tmp_path: Path) -> None:
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 8, 7] + [0] * (256 * 3 - 12))
    im.putdata([0, 1, 2, 3, 2, 1])
    path = tmp_path / "palette.gif"
    im.save(path)
    assert Image.open(path).mode == "P"
    expected = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[9, 8, 7], [0, 0, 255], [0, 255, 0]]])
    np.testing.assert_array_equal(read_image_array(path), expected)


def test_grey_one_bit_and_cmyk(tmp_path: Path) -> None:
    grey = np.array([[0, 17], [200, 255]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image_array(tmp_path / "grey.png"), grey3(grey))
    Image.fromarray(grey > 100).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image_array(tmp_path / "bits.png"), grey3([[0, 0], [255, 255]]))
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_image_array(tmp_path / "cmyk.tif"), [[[255, 255, 255], [0, 255, 255]]])


def test_ppm_is_an_image(tmp_path: Path) -> None:
    assert {".ppm", ".pgm", ".gif", ".tif", ".jpg", ".png"} <= set(IMAGE_EXTENSIONS)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(rgb).save(tmp_path / "stare.ppm")
    np.testing.assert_array_equal(read_image_array(tmp_path / "stare.ppm"), rgb)


def test_truncated_and_unreadable_files_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as im:
        assert im.size == (64, 64)  # the header alone passes
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_image(cut)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.jpg"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(ImageReadError, match=r"missing\.png not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(OSError):  # ImageReadError is an OSError for callers that catch those
        read_image(cut)


def test_32bit_integer_outside_16_bits_is_refused(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), mode="I")
    with pytest.raises(ImageReadError, match=r"upload\.tif.*-5\.\.70000"):
        to_rgb(im, "upload.tif")
