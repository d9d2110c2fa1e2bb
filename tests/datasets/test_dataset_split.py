"""Splits: seeded random (grouped by image or by a regex group), or named by lists, globs and folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from projects.sa2va.datasets.annotations import load_annotations
from projects.sa2va.datasets.split import (
    SplitError,
    image_groups,
    image_key,
    select_images,
    split_by_selection,
    split_records,
    write_split,
)

REPO = Path(__file__).resolve().parents[2]
CHASE = REPO / "data" / "chase_db1"


def _records() -> list[dict]:
    records = [
        {"image": f"im{i:02d}.png", "text": [f"t{i}"], "mask": [[[0, 0, 1, 0, 1, 1]]]} for i in range(20)
    ]
    records += [{**r, "text": ["again"]} for r in records[:5]]  # second record for some images
    records.append({**records[3], "image": "./im03.png", "text": ["dot"]})  # same image, other spelling
    return records


def test_split_is_deterministic_and_disjoint() -> None:
    records = _records()
    train, val = split_records(records, 0.25, seed=0)
    assert (train, val) == split_records(records, 0.25, seed=0)
    train_images = {r["image"].removeprefix("./") for r in train}
    val_images = {r["image"].removeprefix("./") for r in val}
    assert not train_images & val_images
    assert len(val_images) == 5 and len(train_images) == 15
    assert len(train) + len(val) == len(records)
    assert [r for r in records if r in train] == train  # input order kept


def test_split_independent_of_input_order() -> None:
    records = _records()
    _, val = split_records(records, 0.25, seed=3)
    _, val_reversed = split_records(list(reversed(records)), 0.25, seed=3)
    assert {r["image"] for r in val} == {r["image"] for r in val_reversed}


def test_split_seed_and_edges() -> None:
    records = _records()
    vals = {frozenset(r["image"] for r in split_records(records, 0.25, seed=s)[1]) for s in range(5)}
    assert len(vals) > 1
    assert split_records(records, 0.0, seed=0) == (records, [])
    train, val = split_records(records[:2], 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(records, 1.5, seed=0)


def test_write_split(tmp_path: Path) -> None:
    train, val = split_records(_records(), 0.2, seed=0)
    train_path, val_path = write_split(train, val, tmp_path / "out")
    assert json.loads(train_path.read_text()) == train and json.loads(val_path.read_text()) == val
    assert (train_path.name, val_path.name) == ("train.json", "val.json")


# ----------------------------------------------------------------- named and grouped splits


def _chase_records() -> list[dict]:
    """The bundled CHASE_DB1 sample's records (28 images, Image_01L..Image_14R)."""
    return load_annotations(CHASE / "annotations.json", CHASE / "images", check_images=False)


def test_group_regex_keeps_both_eyes_of_a_child_together() -> None:
    records = _chase_records()
    for seed in range(5):
        train, val = split_records(records, 0.2, seed, group_regex=r"Image_(\d+)[LR]")
        val_children = {r["image"][6:8] for r in val}
        train_children = {r["image"][6:8] for r in train}
        assert not val_children & train_children and len(val_children) == 3  # round(0.2 * 14) groups
        assert len(val) == 6 and len(train) == 22
    assert image_groups(["Image_09L.jpg", "Image_09R.jpg"], r"Image_(\d+)[LR]") == {
        "Image_09L.jpg": "09",
        "Image_09R.jpg": "09",
    }
    with pytest.raises(SplitError, match=r"does not match 1 image\(s\): other.png"):
        image_groups(["Image_09L.jpg", "other.png"], r"Image_(\d+)[LR]")
    with pytest.raises(SplitError, match="not a regular expression"):
        image_groups(["a"], "(")


def test_split_without_group_regex_is_unchanged() -> None:
    records = _records()
    assert split_records(records, 0.25, seed=0) == split_records(records, 0.25, seed=0, group_regex=None)
    _, val = split_records(records, 0.25, seed=0)  # the images the split gave before grouping existed
    assert sorted({r["image"] for r in val}) == ["im01.png", "im08.png", "im12.png", "im13.png", "im15.png"]


def test_select_by_list_glob_folder(tmp_path: Path) -> None:
    images = {image_key(r) for r in _chase_records()}
    listed = tmp_path / "test.txt"
    listed.write_text("# official test set\nImage_11L.jpg\nImage_11R\n\n")
    assert select_images(images, lists=[listed]) == {"Image_11L.jpg", "Image_11R.jpg"}
    assert select_images(images, globs=["Image_1[1-4]*"]) == {
        f"Image_{n}{e}.jpg" for n in range(11, 15) for e in "LR"
    }
    folder = tmp_path / "test_images"
    folder.mkdir()
    for name in ("Image_12L.jpg", "Image_12R.jpg"):
        (folder / name).write_bytes((CHASE / "images" / name).read_bytes())
    (folder / "readme.txt").write_text("ignored: not an image file")
    assert select_images(images, folders=[folder]) == {"Image_12L.jpg", "Image_12R.jpg"}


def test_unknown_images_are_named(tmp_path: Path) -> None:
    images = {image_key(r) for r in _chase_records()}
    listed = tmp_path / "test.txt"
    listed.write_text("Image_11L.jpg\nImage_15L.jpg\nimage_12r\n")
    with pytest.raises(SplitError) as err:
        select_images(images, lists=[listed])
    assert (
        f"2 unknown image(s), not in the annotations: 'Image_15L.jpg' ({listed}:2), 'image_12r' ({listed}:3)"
        in str(err.value)
    )
    with pytest.raises(SplitError, match=r"glob 'Image_2\*' matches none of the 28 annotated images"):
        select_images(images, globs=["Image_2*"])
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "Image_99L.jpg").write_bytes(b"x")
    with pytest.raises(SplitError, match=rf"'Image_99L.jpg' \(in folder {folder}\)"):
        select_images(images, folders=[folder])


def test_selection_checks_sides_and_groups() -> None:
    records = _chase_records()
    val = {"Image_11L.jpg", "Image_11R.jpg"}
    train, test = split_by_selection(records, val)
    assert [r["image"] for r in test] == ["Image_11L.jpg", "Image_11R.jpg"] and len(train) == 26
    with pytest.raises(SplitError, match=r"group '12': train Image_12R.jpg / val Image_12L.jpg"):
        split_by_selection(records, val | {"Image_12L.jpg"}, group_regex=r"Image_(\d+)[LR]")
    all_images = {image_key(r) for r in records}
    with pytest.raises(SplitError, match=r"26 image\(s\) named for neither"):
        split_by_selection(records, val, train_images=set())
    with pytest.raises(SplitError, match=r"1 image\(s\) named for both train and val: Image_11L.jpg"):
        split_by_selection(records, val, train_images=all_images - {"Image_11R.jpg"})


def test_split_tool_official_split_reproduces_the_bundled_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "tools/split_dataset.py"), str(CHASE / "annotations.json"),
            "--val-glob", "Image_1[1-4]*", "--group-regex", r"Image_(\d+)[LR]",
            "--train-name", "annotations_train.json", "--val-name", "annotations_test.json",
            "--out-dir", str(tmp_path),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train: 20 records, 20 images, 10 groups" in proc.stdout
    assert "val: 8 records, 8 images, 4 groups" in proc.stdout
    for name in ("annotations_train.json", "annotations_test.json"):
        assert (tmp_path / name).read_bytes() == (CHASE / name).read_bytes()
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "tools/split_dataset.py"), str(CHASE / "annotations.json"),
            "--val-glob", "Image_1[1-4]*", "--val-fraction", "0.2", "--out-dir", str(tmp_path),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--val-fraction is for a random split" in proc.stderr
