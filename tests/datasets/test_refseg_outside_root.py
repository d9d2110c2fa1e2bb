"""RefSegDataset(allow_outside_root=...): image paths outside ``image_root`` are refused by record index
unless the flag allows them; allowed, the sample shows exactly the outside image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from projects.sa2va.datasets.annotations import AnnotationError
from projects.sa2va.datasets.refseg import RefSegDataset
from tests.tiny import DATA_ROOT, TINY_MODEL_CFG


@pytest.fixture(scope="module")
def cfg():
    return Config.fromfile(str(TINY_MODEL_CFG))


def dataset(cfg, ann: Path, root: Path, **kwargs) -> RefSegDataset:
    return RefSegDataset(
        ann_file=str(ann),
        image_root=str(root),
        processor=cfg.processor,
        objects_per_image=1,
        random_templates=False,
        **kwargs,
    )


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_outside_paths_refused_by_default_and_read_when_allowed(tmp_path: Path, cfg, where: str) -> None:
    source = json.loads((DATA_ROOT / "annotations_train.json").read_text())[0]
    root = tmp_path / "images"
    root.mkdir()
    outside = tmp_path / "elsewhere" / source["image"]
    outside.parent.mkdir()
    shutil.copy(DATA_ROOT / "images" / source["image"], outside)
    image = f"../elsewhere/{source['image']}" if where == "dotdot" else str(outside)
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps([dict(source, image=image)]))

    with pytest.raises(AnnotationError, match=r"record 0 .*field 'image'.*allow_outside_root=True"):
        dataset(cfg, ann, root)
    with pytest.raises(AnnotationError, match=r"record 0 .*field 'image'"):
        dataset(cfg, ann, root, allow_outside_root=False)

    ds = dataset(cfg, ann, root, allow_outside_root=True)
    assert len(ds) == 1
    inside_ann = tmp_path / "inside.json"
    inside_ann.write_text(json.dumps([source]))
    reference = dataset(cfg, inside_ann, DATA_ROOT / "images")
    got, want = ds[0], reference[0]
    assert torch.equal(got["g_pixel_values"], want["g_pixel_values"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert torch.equal(got["masks"], want["masks"])
