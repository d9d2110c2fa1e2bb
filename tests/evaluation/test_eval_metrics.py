"""Per-mask metrics, the streaming threshold sweep and the report files (hand-computed values)."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch

from projects.sa2va.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    SegEvaluator,
    ciou,
    cl_dice,
    dice,
    giou,
    iou,
    precision,
    recall,
    write_report,
)

ALL = (dice, iou, precision, recall, cl_dice)


def _mask(shape: tuple[int, int], *slices: tuple[slice, slice]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for s in slices:
        m[s] = True
    return m


# ---------------------------------------------------------------------------------------------
# per-mask metrics
# ---------------------------------------------------------------------------------------------
def test_overlap_metrics_by_hand() -> None:
    gt = _mask((4, 4), (slice(0, 2), slice(0, 2)))  # 4 px
    pred = _mask((4, 4), (slice(0, 2), slice(1, 3)))  # 4 px, TP 2, FP 2, FN 2
    assert dice(pred, gt) == pytest.approx(0.5)
    assert iou(pred, gt) == pytest.approx(1 / 3)
    assert precision(pred, gt) == pytest.approx(0.5)
    assert recall(pred, gt) == pytest.approx(0.5)

    pred = _mask((4, 4), (slice(0, 2), slice(1, 4)))  # 6 px, TP 2, FP 4, FN 2
    assert dice(pred, gt) == pytest.approx(4 / 10)
    assert iou(pred, gt) == pytest.approx(2 / 8)
    assert precision(pred, gt) == pytest.approx(2 / 6)
    assert recall(pred, gt) == pytest.approx(2 / 4)


def test_empty_cases() -> None:
    empty = np.zeros((5, 5), dtype=bool)
    full = _mask((5, 5), (slice(1, 3), slice(1, 3)))
    for fn in ALL:
        assert fn(empty, empty) == 1.0, fn.__name__
        assert fn(empty, full) == 0.0, fn.__name__  # empty prediction
        assert fn(full, empty) == 0.0, fn.__name__  # empty ground truth


def test_cl_dice_on_one_pixel_lines() -> None:
    gt = _mask((5, 10), (slice(2, 3), slice(1, 9)))  # 8 px line; its skeleton is itself
    half = _mask((5, 10), (slice(2, 3), slice(1, 5)))  # 4 px of it
    # Tprec = 4/4, Tsens = 4/8 -> 2 * 1 * 0.5 / 1.5
    assert cl_dice(half, gt) == pytest.approx(2 / 3)
    assert cl_dice(gt, half) == pytest.approx(2 / 3)
    assert cl_dice(gt, gt) == 1.0
    # gt line plus a parallel line two rows below: Tprec = 8/16, Tsens = 8/8 -> 2/3
    two = _mask((5, 10), (slice(2, 3), slice(1, 9)), (slice(4, 5), slice(1, 9)))
    assert cl_dice(two, gt) == pytest.approx(2 / 3)
    # disjoint lines: Tprec = Tsens = 0
    other = _mask((5, 10), (slice(0, 1), slice(1, 9)))
    assert cl_dice(other, gt) == 0.0


def test_cl_dice_rewards_centre_line_of_thick_vessel() -> None:
    gt = _mask((7, 42), (slice(2, 5), slice(1, 41)))  # 3 x 40 band
    pred = _mask((7, 42), (slice(3, 4), slice(1, 41)))  # its 1-px centre line
    assert dice(pred, gt) == pytest.approx(2 * 40 / (40 + 120))  # 0.5
    assert cl_dice(pred, gt) > 0.95  # Tprec = 1, Tsens ~ 1 (skeleton of the band ~ centre line)


def test_ciou_giou_by_hand() -> None:
    gt1 = _mask((4, 4), (slice(0, 2), slice(0, 2)))
    pred1 = _mask((4, 4), (slice(0, 2), slice(1, 3)))  # I 2, U 6
    gt2 = _mask((3, 3), (slice(1, 2), slice(1, 2)))  # I 1, U 1
    assert ciou([pred1, gt2], [gt1, gt2]) == pytest.approx(3 / 7)
    assert giou([pred1, gt2], [gt1, gt2]) == pytest.approx((1 / 3 + 1) / 2)
    empty = np.zeros((2, 2), dtype=bool)
    assert ciou([empty], [empty]) == 1.0
    with pytest.raises(ValueError, match="1 predictions but 2"):
        ciou([empty], [empty, empty])


def test_inputs_torch_and_validation() -> None:
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:2, :2] = True
    pred = torch.zeros(4, 4, dtype=torch.uint8)
    pred[:2, 1:3] = 1
    assert dice(pred, gt) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="only 0 and 1, found value 2"):
        dice(np.full((2, 2), 2), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match=r"differs from gt shape \(3, 3\)"):
        dice(np.zeros((2, 2), bool), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="2-D"):
        dice(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))


# ---------------------------------------------------------------------------------------------
# evaluator
# ---------------------------------------------------------------------------------------------
def _random_query(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    gt = rng.random(shape) < 0.2
    prob = np.clip(0.6 * gt + 0.5 * rng.random(shape) - 0.05, 0.0, 1.0)
    # values exactly on grid points and at the ends exercise the strict ">" rule
    on_grid = rng.random(shape) < 0.2
    prob[on_grid] = rng.choice(DEFAULT_THRESHOLDS, size=int(on_grid.sum()))
    return prob.astype(np.float32), gt


def test_sweep_equals_brute_force_thresholding() -> None:
    rng = np.random.default_rng(0)
    ev = SegEvaluator()
    queries = [_random_query(rng, (23, 31)) for _ in range(3)]
    for i, (prob, gt) in enumerate(queries):
        ev.add(prob, gt, f"q{i}")
    counts = ev.counts()
    for i, (prob, gt) in enumerate(queries):
        p64 = prob.astype(np.float64)
        for k, t in enumerate(ev.thresholds):
            pred = p64 > t
            assert counts["tp"][i, k] == np.count_nonzero(pred & gt)
            assert counts["fp"][i, k] == np.count_nonzero(pred & ~gt)
            assert counts["fn"][i, k] == np.count_nonzero(~pred & gt)
            assert counts["tn"][i, k] == np.count_nonzero(~pred & ~gt)
    for t in (0.0, 0.3, 0.5, 0.77, 1.0):
        s = ev.summary(t)
        for i, (prob, gt) in enumerate(queries):
            pred = prob.astype(np.float64) > t
            row = s["per_query"][i]
            for fn in ALL:
                assert row[fn.__name__] == pytest.approx(fn(pred, gt), abs=1e-12), (t, fn.__name__)


def test_threshold_half_is_strict() -> None:
    ev = SegEvaluator()
    prob = np.array([[0.5, 0.50001], [0.2, 0.9]])
    gt = np.array([[True, True], [False, True]])
    ev.add(prob, gt, "a")
    pred, _ = ev.masks(0, 0.5)
    np.testing.assert_array_equal(pred, prob > 0.5)
    assert ev.summary(0.5)["per_query"][0]["recall"] == pytest.approx(2 / 3)


def test_best_threshold_finds_planted_optimum() -> None:
    rng = np.random.default_rng(1)
    ev = SegEvaluator()
    for i in range(2):
        gt = rng.random((40, 40)) < 0.3
        prob = np.where(gt, rng.uniform(0.305, 1.0, gt.shape), rng.uniform(0.0, 0.295, gt.shape))
        prob[gt.nonzero()[0][0], gt.nonzero()[1][0]] = 0.305  # t = 0.31 loses this fg pixel
        prob[(~gt).nonzero()[0][0], (~gt).nonzero()[1][0]] = 0.295  # t = 0.29 keeps this bg pixel
        ev.add(prob, gt, f"img{i}|vessel")
    best = ev.best_threshold()
    assert best == pytest.approx(0.3)
    assert ev.summary(best, cl_dice=False)["overall"]["dice"] == 1.0
    assert ev.summary(0.5, cl_dice=False)["overall"]["dice"] < 1.0
    assert ev.summary(0.29, cl_dice=False)["overall"]["dice"] < 1.0
    assert ev.summary(0.31, cl_dice=False)["overall"]["dice"] < 1.0


def test_best_threshold_ties_go_to_half_then_lower() -> None:
    gt = np.array([[True, False]])
    ev = SegEvaluator()
    ev.add(np.array([[0.9, 0.1]]), gt, "wide")  # Dice 1 on [0.1, 0.9)
    assert ev.best_threshold() == 0.5
    ev = SegEvaluator()
    ev.add(np.array([[0.95, 0.615]]), gt, "high")  # Dice 1 on [0.615, 0.95) -> 0.62
    assert ev.best_threshold() == pytest.approx(0.62)
    ev = SegEvaluator(thresholds=[0.4, 0.6])
    ev.add(np.array([[0.9, 0.1]]), gt, "sym")  # 0.4 and 0.6 equally far from 0.5
    assert ev.best_threshold() == 0.4


def test_summary_overall_by_hand() -> None:
    ev = SegEvaluator()
    gt1 = _mask((4, 4), (slice(0, 2), slice(0, 2)))
    pred1 = _mask((4, 4), (slice(0, 2), slice(1, 3)))
    gt2 = _mask((3, 3), (slice(1, 2), slice(1, 2)))
    ev.add(pred1.astype(np.float32), gt1, "a")
    ev.add(gt2.astype(np.float32), gt2, "b")
    overall = ev.summary(0.5)["overall"]
    assert overall["dice"] == pytest.approx((0.5 + 1) / 2)
    assert overall["gIoU"] == pytest.approx((1 / 3 + 1) / 2)
    assert overall["cIoU"] == pytest.approx(3 / 7)
    assert overall["pooled_dice"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))
    assert overall["n_queries"] == 2


def _assert_same(a: SegEvaluator, b: SegEvaluator) -> None:
    assert a.keys == b.keys
    for name, value in a.counts().items():
        np.testing.assert_array_equal(value, b.counts()[name])
    assert a.best_threshold() == b.best_threshold()
    assert a.summary(0.5) == b.summary(0.5)
    assert a.summary(0.37) == b.summary(0.37)


def test_merge_and_state_dict_round_trip() -> None:
    rng = np.random.default_rng(2)
    queries = [_random_query(rng, (16 + i, 20)) for i in range(5)]
    whole, part1, part2 = SegEvaluator(), SegEvaluator(), SegEvaluator()
    for i, (prob, gt) in enumerate(queries):
        whole.add(prob, gt, f"q{i}")
        (part1 if i < 2 else part2).add(prob, gt, f"q{i}")
    part1.summary(0.5)  # fill the clDice cache before merging
    gathered = [pickle.loads(pickle.dumps(p.state_dict())) for p in (part1, part2)]
    merged = SegEvaluator.from_state_dict(gathered[0]).merge(SegEvaluator.from_state_dict(gathered[1]))
    _assert_same(merged, whole)
    _assert_same(part1.merge(part2), whole)
    with pytest.raises(ValueError, match="duplicate query keys"):
        whole.merge(SegEvaluator.from_state_dict(gathered[1]))
    with pytest.raises(ValueError, match="different threshold grids"):
        whole.merge(SegEvaluator(thresholds=[0.5]))


def test_evaluator_errors() -> None:
    ev = SegEvaluator()
    with pytest.raises(ValueError, match="no queries"):
        ev.summary(0.5)
    ev.add(torch.full((2, 2), 0.7), torch.ones(2, 2, dtype=torch.bool), "a")
    with pytest.raises(ValueError, match="duplicate query key 'a'"):
        ev.add(np.zeros((2, 2)), np.zeros((2, 2), bool), "a")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ev.add(np.full((2, 2), 1.5), np.zeros((2, 2), bool), "b")
    with pytest.raises(ValueError, match="NaN/inf"):
        ev.add(np.full((2, 2), np.nan), np.zeros((2, 2), bool), "c")
    with pytest.raises(ValueError, match="not on the evaluator grid"):
        ev.summary(0.505)
    with pytest.raises(ValueError, match="unknown sweep metric"):
        ev.best_threshold("f1")
    with pytest.raises(ValueError, match="strictly increasing"):
        SegEvaluator(thresholds=[0.5, 0.4])


def test_write_report(tmp_path) -> None:
    rng = np.random.default_rng(3)
    ev = SegEvaluator()
    for i in range(3):
        prob, gt = _random_query(rng, (12, 12))
        ev.add(prob, gt, f"img{i}.jpg|blood vessel")
    best = ev.best_threshold()
    json_path, csv_path = write_report(ev.summary(0.5), ev.summary(best), best, tmp_path / "eval")
    report = json.loads(json_path.read_text())
    assert report["best_threshold"] == best
    assert report["n_queries"] == 3
    assert report["at_best"]["dice"] >= report["at_0.5"]["dice"]
    assert {"dice", "iou", "precision", "recall", "cl_dice", "cIoU", "gIoU", "pooled_dice"} <= set(
        report["at_0.5"]
    )
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "key",
        *(f"{m}_at_0.5" for m in ("dice", "iou", "precision", "recall", "cl_dice")),
        *(f"{m}_at_best" for m in ("dice", "iou", "precision", "recall", "cl_dice")),
    ]
    assert [r["key"] for r in rows] == ev.keys
    assert float(rows[1]["dice_at_0.5"]) == pytest.approx(ev.summary(0.5)["per_query"][1]["dice"], abs=1e-6)
    # NaN (clDice skipped) is written as null / empty cell
    _, csv2 = write_report(ev.summary(0.5, cl_dice=False), ev.summary(best), best, tmp_path / "nan")
    assert json.loads((tmp_path / "nan" / "report.json").read_text())["at_0.5"]["cl_dice"] is None
    assert next(csv.DictReader(csv2.open()))["cl_dice_at_0.5"] == ""
