"""End-to-end: masks_to_annotations.py (mask folders and COCO), check_dataset.py, split_dataset.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations
from projects.sa2va.datasets.convert import ConversionError, convert_coco, count_components, count_holes

REPO = Path(__file__).resolve().parents[2]
H, W = 24, 32


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / name), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def convert_folder(
    folder: Path, out: Path, *args: str | Path, masks: Path | None = None
) -> subprocess.CompletedProcess:
    """masks_to_annotations.py on ``folder/images`` + ``masks`` (default ``folder/masks``) -> ``out``."""
    masks = folder / "masks" if masks is None else masks
    return run_tool(
        "masks_to_annotations.py", "--images", folder / "images", "--masks", masks, "--out", out, *args
    )


def _vessel_mask(seed: int) -> np.ndarray:
    """Several components, a hole, a 1-px line and a single pixel."""
    mask = np.zeros((H, W), dtype=bool)
    mask[2:12, 2:14] = True
    mask[5:8, 6:9] = False  # hole
    mask[15, 3:30] = True  # thin line
    mask[20, 20 + seed % 5] = True  # single pixel
    mask[18:22, 5 + seed : 8 + seed] = True
    return mask


def _save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"im{i}.png"
        )
        _save_mask(tmp_path / "masks" / f"im{i}_mask.png", _vessel_mask(i))
        _save_mask(tmp_path / "masks" / f"im{i}_vein.png", np.roll(_vessel_mask(i), 3, axis=1))
    return tmp_path


def test_converter_rle_is_exact_end_to_end(folder: Path) -> None:
    out = folder / "annotations.json"
    proc = convert_folder(folder, out, "--text", "blood vessel")
    assert proc.returncode == 0, proc.stderr
    assert "EXACT" in proc.stdout and "im1.png [blood vessel]: dice 1.0000, 0 px differ" in proc.stdout
    assert "UNUSED files in the mask folder (3)" in proc.stdout  # the *_vein.png files are reported
    records = load_annotations(out, folder / "images")
    assert [r["image"] for r in records] == ["im0.png", "im1.png", "im2.png"]
    for i, record in enumerate(records):
        assert record["text"] == ["blood vessel"] and isinstance(record["mask"][0][0], dict)
        decoded = decode_record_masks(record, H, W)[0]
        source = _vessel_mask(i)
        assert np.array_equal(decoded, source)
        assert count_components(decoded) == count_components(source) == 4
        assert count_holes(decoded) == count_holes(source) == 1


def test_converter_multi_object_patterns(folder: Path) -> None:
    out = folder / "multi.json"
    proc = convert_folder(
        folder,
        out,
        "--mask-pattern",
        "{stem}_mask.png",
        "--text",
        "artery",
        "--mask-pattern",
        "{stem}_vein.png",
        "--text",
        "vein",
    )
    assert proc.returncode == 0, proc.stderr
    records = load_annotations(out, folder / "images")
    assert all(r["text"] == ["artery", "vein"] for r in records)
    masks = decode_record_masks(records[2], H, W)
    assert np.array_equal(masks[0], _vessel_mask(2)) and np.array_equal(
        masks[1], np.roll(_vessel_mask(2), 3, axis=1)
    )


def test_converter_missing_mask_is_an_error_naming_both_paths(folder: Path) -> None:
    (folder / "masks" / "im1_mask.png").unlink()
    out = folder / "annotations.json"
    proc = convert_folder(folder, out, "--text", "v")
    assert proc.returncode == 1 and not out.exists()
    assert (
        str(folder / "images" / "im1.png") in proc.stderr
        and str(folder / "masks" / "im1_mask.png") in proc.stderr
    )
    proc = convert_folder(folder, out, "--text", "v", "--allow-missing")
    assert proc.returncode == 0, proc.stderr
    assert f"MISSING mask {folder / 'masks' / 'im1_mask.png'}" in proc.stdout
    assert len(json.loads(out.read_text())) == 2


def test_converter_polygon_mode_reports_its_error(folder: Path) -> None:
    out = folder / "poly.json"
    proc = convert_folder(folder, out, "--text", "v", "--format", "polygon")
    assert proc.returncode == 0, proc.stderr
    assert "NOT exact" in proc.stdout and "holes 1 -> 0" in proc.stdout
    record = load_annotations(out, folder / "images")[0]
    assert all(isinstance(part, list) for part in record["mask"][0])


def test_converter_rejects_label_masks_below_threshold(folder: Path) -> None:
    Image.fromarray(_vessel_mask(0).astype(np.uint8)).save(folder / "masks" / "im0_mask.png")  # 0/1 values
    proc = convert_folder(folder, folder / "a.json", "--text", "v")
    assert proc.returncode == 1 and "--threshold" in proc.stderr
    assert convert_folder(folder, folder / "a.json", "--text", "v", "--threshold", "0").returncode == 0


def test_converter_same_folder_for_images_and_masks(folder: Path) -> None:
    for path in (folder / "masks").glob("*_mask.png"):
        path.rename(folder / "images" / path.name)
    out = folder / "a.json"
    proc = convert_folder(folder, out, "--text", "v", masks=folder / "images")
    assert proc.returncode == 0, proc.stderr
    assert [r["image"] for r in json.loads(out.read_text())] == ["im0.png", "im1.png", "im2.png"]


def test_check_dataset_exit_codes(folder: Path) -> None:
    out = folder / "annotations.json"
    assert convert_folder(folder, out, "--text", "v").returncode == 0
    proc = run_tool("check_dataset.py", out, "--images", folder / "images")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip().endswith("3 records, 3 objects, 0 problems")

    records = json.loads(out.read_text())
    records[1]["text"] = []
    records[2]["image"] = "gone.png"
    out.write_text(json.dumps(records))
    proc = run_tool("check_dataset.py", out, "--images", folder / "images")
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert f"{out}: record 1 ('im1.png'), field 'text': text is empty" in lines[0]
    assert "record 1 ('im1.png'), field 'mask': 0 texts but 1 masks" in lines[1]
    assert "record 2 ('gone.png'), field 'image': image file not found" in lines[2]
    assert lines[-1].endswith("3 records, 3 objects, 3 problems")


def test_split_dataset_tool(folder: Path) -> None:
    out = folder / "annotations.json"
    assert convert_folder(folder, out, "--text", "v").returncode == 0
    proc = run_tool(
        "split_dataset.py", out, "--val-fraction", "0.34", "--seed", "0", "--out-dir", folder / "split"
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: 2 records, 2 images" in proc.stdout and "val: 1 records, 1 images" in proc.stdout
    train = json.loads((folder / "split" / "train.json").read_text())
    val = json.loads((folder / "split" / "val.json").read_text())
    assert sorted(r["image"] for r in train + val) == ["im0.png", "im1.png", "im2.png"]


# ------------------------------------------------------------------------------------------ COCO


def _coco(tmp_path: Path) -> Path:
    crowd = np.zeros((H, W), dtype=bool)
    crowd[10:14, 20:30] = True
    runs, flat, value, n = [], crowd.T.reshape(-1), False, 0  # column-major runs, background first
    for pixel in flat:
        if pixel != value:
            runs.append(n)
            value, n = pixel, 0
        n += 1
    runs.append(n)
    coco = {
        "images": [
            {"id": 7, "file_name": "a.png", "height": H, "width": W},
            {"id": 8, "file_name": "b.png", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": "vessel"}, {"id": 2, "name": "lesion"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 2,
                "iscrowd": 1,
                "segmentation": {"size": [H, W], "counts": runs},
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[1, 1, 8, 1, 8, 6, 1, 6]],
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[4, 4, 12, 4, 12, 9], [14, 14, 18, 14, 18, 18, 14, 18]],
            },
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_conversion_groups_by_category(tmp_path: Path) -> None:
    result = convert_coco(_coco(tmp_path))
    assert result.exact and result.without_objects == ["b.png"]
    (record,) = result.records
    assert record["image"] == "a.png" and record["text"] == ["vessel", "lesion"]
    vessel, lesion = record["mask"]
    assert vessel == [[1, 1, 8, 1, 8, 6, 1, 6], [4, 4, 12, 4, 12, 9], [14, 14, 18, 14, 18, 18, 14, 18]]
    assert len(lesion) == 1 and isinstance(lesion[0]["counts"], str)  # crowd RLE kept as RLE
    masks = decode_record_masks(record, H, W)
    assert masks[1].sum() == 40 and masks[1][10:14, 20:30].all()
    assert count_components(masks[0]) == 2


def test_coco_per_instance_and_cli(tmp_path: Path) -> None:
    assert [r["text"] for r in convert_coco(_coco(tmp_path), per_instance=True).records] == [
        ["lesion", "vessel", "vessel"]
    ]
    out = tmp_path / "annotations.json"
    proc = run_tool("masks_to_annotations.py", "--coco", _coco(tmp_path), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "NO RECORD for image b.png" in proc.stdout and "EXACT" in proc.stdout
    assert len(json.loads(out.read_text())) == 1


def test_coco_bad_reference_is_an_error(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match="annotation id 2: unknown category_id 99"):
        convert_coco(path)
