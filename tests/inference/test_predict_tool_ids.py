"""tools/predict.py names the object of every mask (``objects``) and writes instance-ID PNGs (``--id-image``).

The unit tests write a hand-made :class:`Prediction`; the end-to-end test runs the tool (subprocess) on a
tiny model overfit to answer ``Sure, the artery is [SEG] and the vein is [SEG].``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.sa2va.datasets.instance_ids import read_instance_ids
from projects.sa2va.inference.io import entry_files, save_prediction
from projects.sa2va.inference.predictor import Prediction
from tests.inference.conftest import MAX_TILES, PROMPT_TWO, TINY_MODEL_CFG, _overfit, load_rgb
from tests.inference.test_predict_tool import _run

NAMED_TWO = "Sure, the artery is [SEG] and the vein is [SEG]."


def _prediction(text: str, probs: np.ndarray, threshold: float = 0.5) -> Prediction:
    probs = np.asarray(probs, dtype=np.float32)
    return Prediction(
        text=text,
        probs=probs,
        masks=probs > threshold,
        threshold=threshold,
        token_ids=[],
        seg_embeds=np.zeros((len(probs), 4), np.float32),
    )


def test_objects_and_id_image_of_two_overlapping_masks(tmp_path: Path) -> None:
    probs = np.zeros((2, 3, 4), np.float32)
    probs[0, :, :2] = 0.9  # artery: left half
    probs[1, :, 1:3] = 0.7  # vein: middle, overlapping the artery in column 1 (less probable there)
    probs[1, 0, 1] = 0.95  # ... except at (0, 1), where the vein is the more probable
    probs[1, 2, 3] = 0.5  # not above the threshold: background
    image = np.zeros((3, 4, 3), np.uint8)
    entry = save_prediction(_prediction(NAMED_TWO, probs), image, tmp_path, "img", id_image=True)
    assert entry["objects"] == ["artery", "vein"]
    assert entry["id_image"] == "img_ids.png"
    assert "img_ids.png" in entry_files(entry)
    ids = read_instance_ids(tmp_path / "img_ids.png")
    assert ids.tolist() == [[1, 2, 2, 0], [1, 1, 2, 0], [1, 1, 2, 0]]
    assert np.asarray(Image.open(tmp_path / "img_ids.png")).dtype == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file


def test_a_bare_seg_names_no_object_and_no_id_image_unless_asked(tmp_path: Path) -> None:
    probs = np.full((1, 2, 2), 0.8, np.float32)
    entry = save_prediction(_prediction("Sure, [SEG].", probs), np.zeros((2, 2, 3), np.uint8), tmp_path, "a")
    assert entry["objects"] == [None]
    assert "id_image" not in entry and not (tmp_path / "a_ids.png").exists()
    assert entry_files(entry) == ["a_mask0.png", "a_prob0.png", "a_overlay.png"]


def test_an_answer_with_another_seg_count_than_masks_is_refused(tmp_path: Path) -> None:
    probs = np.full((1, 2, 2), 0.8, np.float32)
    with pytest.raises(ValueError, match=r"img7: the answer .* holds 2 \[SEG\], the prediction 1 masks"):
        save_prediction(_prediction(NAMED_TWO, probs), np.zeros((2, 2, 3), np.uint8), tmp_path, "img7")


@pytest.mark.slow
def test_predict_tool_writes_objects_and_id_images(tmp_path: Path) -> None:
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    predictor = Sa2VAPredictor.from_config(TINY_MODEL_CFG, seed=0, max_tiles=MAX_TILES)
    crop = np.ascontiguousarray(load_rgb("Image_01R.jpg")[100:300])  # 200x512: 2x1 tiles + thumbnail
    torch.manual_seed(0)
    loss = _overfit(predictor, [(crop, PROMPT_TWO, NAMED_TWO)])
    assert loss < 0.1, f"overfitting the tiny model failed (LM loss {loss:.3f})"
    expected = predictor.predict([crop], PROMPT_TWO)[0]
    assert expected.text == NAMED_TWO and expected.num_masks == 2
    ckpt = tmp_path / "iter_1.pth"
    torch.save({"state_dict": predictor.model.state_dict()}, ckpt)
    image = tmp_path / "crop.png"
    Image.fromarray(crop).save(image)
    out = tmp_path / "out"
    res = _run(
        "--config", str(TINY_MODEL_CFG), "--checkpoint", str(ckpt), "--images", str(image),
        "--prompt", PROMPT_TWO, "--out-dir", str(out), "--max-tiles", str(MAX_TILES), "--id-image",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    entry = json.loads((out / "predictions.json").read_text())["images"][0]
    assert entry["text"] == NAMED_TWO
    assert entry["objects"] == ["artery", "vein"]
    assert entry["masks"] == ["crop_mask0.png", "crop_mask1.png"] and entry["id_image"] == "crop_ids.png"
    # The record line names the id image too (its digest is checked by --skip-existing).
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert "crop_ids.png" in json.dumps(record)
    ids = read_instance_ids(out / "crop_ids.png")
    masks = [np.asarray(Image.open(out / name)) == 255 for name in entry["masks"]]
    assert ids.shape == (200, 512) and set(np.unique(ids).tolist()) <= {0, 1, 2}
    # id k+1 only inside mask k; 0 exactly where no mask is.
    for k, mask in enumerate(masks):
        assert not (ids == k + 1)[~mask].any()
    assert np.array_equal(ids == 0, ~(masks[0] | masks[1]))
    # The subprocess rebuilt the same model: the id image composes the in-process probabilities.
    from projects.sa2va.datasets.instance_ids import probs_to_ids

    assert (ids != probs_to_ids(expected.probs, expected.threshold)).mean() < 1e-3
