"""``tools/predict.py --images``: files and folders expanded, and what a folder holds that is not read
(subfolders, other files) reported instead of skipped silently."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.inference.io import list_images


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


def test_a_folder_is_read_one_level_deep_and_the_rest_is_reported(tmp_path):
    a, b = _png(tmp_path / "f/a.png"), _png(tmp_path / "f/b.jpg")
    _png(tmp_path / "f/sub/c.png")
    (tmp_path / "f/notes.txt").write_text("x")
    single = _png(tmp_path / "d.png")
    messages: list[str] = []
    assert list_images([tmp_path / "f", single], report=messages.append) == [a, b, single]
    assert messages == [
        f"folder {tmp_path / 'f'}: 1 subfolder(s) (sub/) and 1 file(s) without an image extension "
        "(notes.txt) not read (a folder is read one level deep; name subfolders too)"
    ]
    messages.clear()
    assert list_images([tmp_path / "f/sub"], report=messages.append) == [tmp_path / "f/sub/c.png"]
    assert messages == []


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png does not exist"):
        list_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        list_images([tmp_path / "empty"])
    _png(tmp_path / "x/im.png")
    _png(tmp_path / "y/im.png")
    with pytest.raises(ValueError, match="share the stem 'im'"):
        list_images([tmp_path / "x", tmp_path / "y"])
    with pytest.raises(ValueError, match="no image paths"):
        list_images([])
