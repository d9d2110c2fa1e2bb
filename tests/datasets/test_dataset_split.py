"""split_records: deterministic, grouped by image, disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projects.sa2va.datasets.split import split_records, write_split


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
