"""Scoring inside the field of view: the metric accumulation with a valid-pixel mask (exact counts,
unchanged without one), FOV masks from a folder or from the image (auto)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.fov import auto_fov
from projects.sa2va.evaluation.fov import FovSource, restrict, score_fov
from projects.sa2va.evaluation.metrics import SegEvaluator, cl_dice, dice

ROOT = Path(__file__).resolve().parents[2]
CHASE = ROOT / "data/chase_db1"


def _query(seed: int, shape=(24, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.random(shape)
    gt = rng.random(shape) > 0.7
    valid = np.zeros(shape, dtype=bool)
    valid[3:-3, 4:-6] = True
    return prob, gt, valid


def test_valid_mask_counts_are_exact() -> None:
    prob = np.array([[0.9, 0.9, 0.2, 0.9], [0.1, 0.6, 0.9, 0.0]])
    gt = np.array([[1, 0, 1, 1], [0, 1, 0, 1]], dtype=bool)
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    ev = SegEvaluator()
    ev.add(prob, gt, "a", valid=valid)
    k = ev.threshold_index(0.5)
    c = {name: int(v[0, k]) for name, v in ev.counts().items()}
    # inside: pred (0.9, 0.9, 0.2 | 0.1, 0.6) -> 1 1 0 | 0 1; gt 1 0 1 | 0 1
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert ev.summary(0.5, cl_dice=False)["overall"]["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    whole = SegEvaluator()
    whole.add(prob, gt, "a")
    assert {name: int(v[0, k]) for name, v in whole.counts().items()} == {"tp": 3, "fp": 2, "fn": 2, "tn": 1}


def test_valid_mask_equals_masking_both_sides() -> None:
    """Scoring inside ``valid`` = scoring ``pred & valid`` against ``gt & valid`` (Dice, clDice)."""
    ev = SegEvaluator()
    for seed in range(3):
        prob, gt, valid = _query(seed)
        ev.add(prob, gt, f"q{seed}", valid=valid)
    summary = ev.summary(0.5)
    for seed, row in enumerate(summary["per_query"]):
        prob, gt, valid = _query(seed)
        pred = prob > 0.5
        assert row["dice"] == pytest.approx(dice(pred & valid, gt & valid))
        assert row["cl_dice"] == pytest.approx(cl_dice(pred & valid, gt & valid))


def test_no_valid_mask_and_all_valid_change_nothing() -> None:
    plain, all_valid = SegEvaluator(), SegEvaluator()
    for seed in range(3):
        prob, gt, _ = _query(seed)
        plain.add(prob, gt, f"q{seed}")
        all_valid.add(prob, gt, f"q{seed}", valid=np.ones_like(gt))
    assert plain.summary(0.5) == all_valid.summary(0.5)
    assert plain.state_dict()["n_pix"] == all_valid.state_dict()["n_pix"]
    assert plain.best_threshold() == all_valid.best_threshold()


def test_restricted_equals_adding_with_the_mask() -> None:
    plain, direct = SegEvaluator(), SegEvaluator()
    masks = []
    for seed in range(3):
        prob, gt, valid = _query(seed)
        plain.add(prob, gt, f"q{seed}")
        direct.add(prob, gt, f"q{seed}", valid=valid)
        masks.append(valid)
    restricted = plain.restricted(masks)
    assert restricted.summary(0.3) == direct.summary(0.3)
    assert np.array_equal(restricted.curve("dice"), direct.curve("dice"))
    assert plain.restricted([None, None, None]).summary(0.5) == plain.summary(0.5)
    with pytest.raises(ValueError, match="one valid mask per query"):
        plain.restricted(masks[:2])
    with pytest.raises(ValueError, match="valid mask shape"):
        plain.restricted([np.ones((2, 2), bool)] * 3)


# ---------------------------------------------------------------------------------- FOV sources


def _evaluator_on_chase(names: list[str]) -> SegEvaluator:
    """Ground truth of the bundled masks, a blurred copy as the prediction."""
    from projects.sa2va.datasets.convert import read_binary_mask

    ev = SegEvaluator()
    for name in names:
        gt = read_binary_mask(CHASE / "masks" / f"{Path(name).stem}_1stHO.png")
        prob = np.clip(gt * 0.8 + np.roll(gt, 2, axis=1) * 0.3, 0, 1)
        ev.add(prob, gt, f"{name}|0|blood vessel")
    return ev


def test_auto_fov_on_chase_and_scores() -> None:
    names = ["Image_11L.jpg", "Image_12R.jpg"]
    ev = _evaluator_on_chase(names)
    fov_ev, fraction = restrict(ev, FovSource(), CHASE / "images")
    assert 0.68 < fraction < 0.71
    with Image.open(CHASE / "images/Image_11L.jpg") as im:
        fov = auto_fov(np.asarray(im.convert("RGB")))
    assert fov_ev.state_dict()["n_pix"][0] == int(fov.sum())
    result = score_fov(ev, FovSource(), CHASE / "images")
    # vessels lie inside the FOV: TP/FP/FN hardly change, TN shrinks
    whole = ev.summary(result.threshold, cl_dice=False)["overall"]["dice"]
    assert result.at_best["overall"]["dice"] == pytest.approx(whole, abs=0.01)
    assert "the evaluated (test) set itself" in result.chosen_on


def test_fov_folder_with_patterns_and_errors(tmp_path: Path) -> None:
    names = ["Image_11L.jpg", "Image_12R.jpg"]
    ev = _evaluator_on_chase(names)
    for name in names:
        with Image.open(CHASE / "images" / name) as im:
            fov = auto_fov(np.asarray(im.convert("RGB")))
        Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / f"{Path(name).stem}_mask.gif")
    by_folder, _ = restrict(ev, FovSource.parse(str(tmp_path)), CHASE / "images")
    by_auto, _ = restrict(ev, FovSource.parse("auto"), CHASE / "images")
    assert by_folder.summary(0.5) == by_auto.summary(0.5)
    named = FovSource.parse(str(tmp_path), "fov_{n}.gif", "Image_{n}.jpg")
    for name in names:
        (tmp_path / f"{Path(name).stem}_mask.gif").rename(tmp_path / f"fov_{name[6:9]}.gif")
    assert restrict(ev, named, CHASE / "images")[0].summary(0.5) == by_auto.summary(0.5)
    (tmp_path / "fov_12R.gif").unlink()
    with pytest.raises(FileNotFoundError, match=rf"Image_12R.jpg \(expected {tmp_path}/fov_12R.gif\)"):
        restrict(ev, named, CHASE / "images")
    Image.new("L", (10, 10), 255).save(tmp_path / "fov_12R.gif")
    with pytest.raises(ValueError, match=r"fov_12R\.gif is 10x10 but its image is 512x512"):
        restrict(ev, named, CHASE / "images")
    with pytest.raises(ValueError, match="not found"):
        FovSource.parse(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="format spec"):
        FovSource.parse(str(tmp_path), "{stem:.3}_mask.gif")
