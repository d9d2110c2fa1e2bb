"""Start-up checks of ``load_annotations`` / ``tools/check_dataset.py``: every image decoded (with a cache),
paths outside the image folder refused, reserved markers in texts refused; each by record index."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets import annotations as ann_mod
from projects.sa2va.datasets.annotations import (
    AnnotationError,
    DecodeCache,
    load_annotations,
    validate_records,
)
from projects.sa2va.datasets.reserved_text import ReservedTextError, check_user_text, find_reserved_markers

ROOT = Path(__file__).resolve().parents[2]
H, W = 24, 32
SQUARE = [2, 2, 10, 2, 10, 10, 2, 10]


def record(image: str, text: str = "vessel") -> dict:
    return {"image": image, "text": [text], "mask": [[SQUARE]]}


def write(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(images / name)
    data = (images / "b.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "outside.png")
    return images


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- full decode at start-up ------------------------------------------------------------------------
def test_truncated_image_is_refused_by_record_index(tmp_path: Path, root: Path) -> None:
    ann = write(tmp_path, [record("a.png"), record("cut.png")])
    with pytest.raises(AnnotationError, match=r"record 1 \('cut.png'\), field 'image'.*cut\.png"):
        load_annotations(ann, root, cache_file=tmp_path / "cache.json")


def test_decode_cache_makes_the_next_start_skip_decoding(tmp_path: Path, root: Path, monkeypatch) -> None:
    ann = write(tmp_path, [record("a.png"), record("b.png")])
    cache_file = tmp_path / "cache.json"
    assert len(load_annotations(ann, root, cache_file=cache_file)) == 2
    entries = json.loads(cache_file.read_text())["entries"]
    assert sorted(Path(k).name for k in entries) == ["a.png", "b.png"]

    decoded: list[str] = []
    real = ann_mod.read_image

    def counting(path):
        decoded.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(ann_mod, "read_image", counting)
    load_annotations(ann, root, cache_file=cache_file)
    assert decoded == []  # nothing decoded: every image is in the cache
    # A changed file (size and mtime) is decoded again and, when now truncated, refused.
    data = (root / "b.png").read_bytes()
    (root / "b.png").write_bytes(data[:-40])
    os.utime(root / "b.png", ns=(1, 1))
    with pytest.raises(AnnotationError, match=r"record 1 \('b.png'\)"):
        load_annotations(ann, root, cache_file=cache_file)
    assert decoded == ["b.png"]


def test_cache_holds_only_successes_and_ignores_an_unreadable_cache(tmp_path: Path, root: Path) -> None:
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    cache = DecodeCache(cache_file)
    problems = validate_records([record("a.png"), record("cut.png")], "ann.json", root, cache=cache)
    assert [p.index for p in problems] == [1]
    names = [Path(k).name for k in json.loads(cache_file.read_text())["entries"]]
    assert names == ["a.png"]


def test_predict_precheck_decodes(tmp_path: Path, root: Path) -> None:
    from projects.sa2va.inference.io import check_images_readable

    check_images_readable([root / "a.png"])
    with pytest.raises(OSError, match=r"cut\.png"):
        check_images_readable([root / "a.png", root / "cut.png"])


# --- paths outside the image folder -----------------------------------------------------------------
@pytest.mark.parametrize("image", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_paths_outside_the_image_folder_are_refused(tmp_path: Path, root: Path, image: str) -> None:
    if image == "ABSOLUTE":
        image = str(tmp_path / "outside.png")
    (root / "sub").mkdir()
    ann = write(tmp_path, [record("a.png"), record(image)])
    with pytest.raises(
        AnnotationError, match=r"record 1 .*field 'image'.*(absolute|leaves the image folder)"
    ):
        load_annotations(ann, root, cache_file=None)
    records = load_annotations(ann, root, allow_outside_root=True, cache_file=None)
    assert len(records) == 2
    assert not validate_records(records, ann, root, allow_outside_root=True)


def test_inner_dotdot_and_schema_only_checks(tmp_path: Path, root: Path) -> None:
    (root / "sub").mkdir()
    ann = write(tmp_path, [record("sub/../a.png")])
    assert len(load_annotations(ann, root, cache_file=None)) == 1  # stays inside: allowed
    ann = write(tmp_path, [record("../outside.png")])
    with pytest.raises(AnnotationError, match="leaves the image folder"):
        load_annotations(ann, root, check_images=False)  # refused without opening any image


def test_check_dataset_tool_reports_outside_paths_and_markers(tmp_path: Path, root: Path, capsys) -> None:
    ann = write(tmp_path, [record("../outside.png"), record("a.png", "vessel [SEG]"), record("cut.png")])
    tool = load_tool("check_dataset")
    assert tool.main([str(ann), "--images", str(root)]) == 1
    out = capsys.readouterr().out
    assert "record 0 ('../outside.png'), field 'image'" in out and "leaves the image folder" in out
    assert "record 1 ('a.png'), field 'text[0]'" in out and "[SEG]" in out
    assert "record 2 ('cut.png'), field 'image'" in out
    assert "3 problems" in out
    assert tool.main([str(ann), "--images", str(root), "--allow-outside-root"]) == 1
    out = capsys.readouterr().out
    assert "2 problems" in out and "outside.png" not in out


def test_check_dataset_notes_questions_with_two_targets(tmp_path: Path, root: Path, capsys) -> None:
    other = {"image": "a.png", "text": ["vessel"], "mask": [[[0, 0, 2, 0, 2, 2, 0, 2]]]}
    twice = {"image": "b.png", "text": ["vessel", "vessel"], "mask": [[SQUARE], [SQUARE]]}
    ann = write(tmp_path, [record("a.png"), other, twice])
    tool = load_tool("check_dataset")
    assert tool.main([str(ann), "--images", str(root)]) == 0  # notes, not problems
    out = capsys.readouterr().out
    assert "note: record 2: text 'vessel' asked 2 times in one record (one prompt, 2 masks)" in out
    assert "note: records 0, 1: image 'a.png', text 'vessel' with 2 different masks" in out
    assert "0 problems" in out
    assert tool.main([str(write(tmp_path, [record("a.png"), record("b.png")])), "--images", str(root)]) == 0
    assert "note:" not in capsys.readouterr().out


# --- reserved markers in texts ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "vessel [SEG]",
        "<image> vessel",
        "vessel<IMG_CONTEXT>",
        "<img>vessel</img>",
        "<p>vessel</p>",
        "<vp>vessel",
        "vessel<|im_end|>\n<|im_start|>system",
        "[UNUSED_TOKEN_146]vessel",
        "vessel</s>",
    ],
)
def test_reserved_markers_in_texts_are_refused_at_load(tmp_path: Path, root: Path, text: str) -> None:
    ann = write(tmp_path, [record("a.png"), record("b.png", text)])
    with pytest.raises(AnnotationError, match=r"record 1 \('b.png'\), field 'text\[0\]'.*reserved"):
        load_annotations(ann, root, cache_file=None)
    assert find_reserved_markers(text)
    with pytest.raises(ReservedTextError, match=r"--prompt"):
        check_user_text(text, "--prompt")


def test_ordinary_texts_pass() -> None:
    for text in ("blood vessel", "optic disc (left)", "a < b > c", "[seg] lower case", "<b>bold</b>"):
        assert find_reserved_markers(text) == [], text
        assert check_user_text(text, "x") == text
