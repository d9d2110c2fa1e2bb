"""Tiled masks and flip TTA with a Qwen-VL family (patches + image_grid_thw per window) on the tiny
random Qwen3-VL config: the predictor's window path and the tiled evaluation step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.tiling import tile_windows

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "projects/sa2va/configs/sa2va_tiny_qwen3vl_demo.py"
PROMPT = "Please segment the blood vessel."


@pytest.fixture(scope="module")
def predictor():
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    return Sa2VAPredictor.from_config(CFG, seed=0)


def test_qwenvl_predictor_blends_windows(predictor) -> None:
    p = predictor
    with Image.open(ROOT / "data/chase_db1/images/Image_01L.jpg") as im:
        image = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]
    window = p.sam2_size
    assert max(h, w) > window  # the bundled image is larger than the tiny model's SAM2 input
    answer = p.tokenizer.encode("Sure, [SEG]." + p.template["SUFFIX"], add_special_tokens=False)
    whole = p._view_probs([image], PROMPT, answer, 1)[0]
    assert whole.shape == (1, h, w)
    tiled, views = p._blended_probs(image, PROMPT, answer, whole, p.tiling.parse("on"), flip=True)
    assert views == 2 * len(tile_windows(h, w, window, 0.25))
    assert tiled.shape == (1, h, w) and np.isfinite(tiled).all()
    assert not np.allclose(tiled, whole, atol=1e-4)


def test_qwenvl_tiled_eval_step(predictor) -> None:
    from projects.sa2va.evaluation.evaluate import build_eval_dataset
    from projects.sa2va.evaluation.tiled import TiledEvalStep, view_item

    model = predictor.model
    ds = build_eval_dataset(Config.fromfile(str(CFG)))
    rec = ds.records[0]
    image = np.asarray(ds.load_image(rec, 0))
    from projects.sa2va.datasets.annotations import decode_record_masks

    masks = decode_record_masks(rec, *image.shape[:2], validated=True)
    item, expected = view_item(ds, 0, image, masks), ds[0]
    for key in ("input_ids", "labels", "pixel_values", "image_grid_thw", "g_pixel_values", "masks"):
        assert torch.equal(item[key], expected[key]), key
    step = TiledEvalStep(model, ds, tiling="on", flip_tta=True)
    out = step(sa2va_collate([ds[0]]))[0]
    h, w = image.shape[:2]
    assert step.views_run == 2 * len(tile_windows(h, w, ds.sam2_image_size, 0.25))
    assert out["probs"].shape == out["gt"].shape == (len(rec["text"]), h, w)
