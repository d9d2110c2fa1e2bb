"""The bundled CHASE_DB1 sample: exact RLE round trip against its mask PNGs, split, attribution, size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations
from projects.sa2va.datasets.convert import count_components, count_holes, read_binary_mask

ROOT = Path(__file__).resolve().parents[2] / "data" / "chase_db1"


def test_rle_round_trip_is_exact_on_every_mask() -> None:
    records = load_annotations(ROOT / "annotations.json", ROOT / "images")
    assert len(records) == 28
    total_holes = 0
    for record in records:
        assert record["text"] == ["blood vessel"] and len(record["mask"]) == 1
        with Image.open(ROOT / "images" / record["image"]) as im:
            assert im.size == (512, 512) and im.mode == "RGB"
        source = read_binary_mask(ROOT / "masks" / f"{Path(record['image']).stem}_1stHO.png")
        decoded = decode_record_masks(record, 512, 512)[0]
        assert np.array_equal(decoded, source), record["image"]
        assert count_components(decoded) == count_components(source)
        assert count_holes(decoded) == count_holes(source)
        total_holes += count_holes(source)
    assert total_holes > 100  # vessel loops: the holes a polygon converter would fill


def test_train_test_split() -> None:
    train = load_annotations(ROOT / "annotations_train.json", ROOT / "images", check_images=False)
    test = load_annotations(ROOT / "annotations_test.json", ROOT / "images", check_images=False)
    train_names = [r["image"] for r in train]
    test_names = [r["image"] for r in test]
    assert len(train_names) == 20 and len(test_names) == 8
    assert train_names[0] == "Image_01L.jpg" and train_names[-1] == "Image_10R.jpg"
    assert test_names[0] == "Image_11L.jpg" and test_names[-1] == "Image_14R.jpg"
    everything = load_annotations(ROOT / "annotations.json", ROOT / "images", check_images=False)
    assert train + test == everything


def test_attribution_and_size() -> None:
    source = (ROOT / "SOURCE.md").read_text()
    for needed in ("CC BY 4.0", "Fraz", "Owen", "researchdata.kingston.ac.uk", "1stHO", "512x512", "0.5"):
        assert needed in source
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 3 * 1024 * 1024
