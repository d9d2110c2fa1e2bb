"""Plots write non-empty PNGs; overlays have exact colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from projects.sa2va.evaluation.metrics import SegEvaluator
from projects.sa2va.evaluation.plots import (
    ERROR_COLORS,
    _is_val_dice_key,
    error_map,
    overlay,
    overlay_grid,
    plot_curves,
    plot_pr_curve,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def _write_scalars(path: Path, rows: list[dict]) -> Path:
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, "")  # blank lines are skipped
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plot_curves_from_scalars_json(tmp_path: Path) -> None:
    rows = [
        {"lr": 4e-5, "loss": 2.0 - 0.1 * i, "loss_mask": 1.0, "loss_dice": 0.5, "iter": i, "step": i}
        for i in range(1, 11)
    ]
    rows += [{"val/dice": 0.6, "val/cIoU": 0.4, "step": 5}, {"val/dice": 0.7, "step": 10}]
    rows.append({"dice": 0.65, "time": 0.2, "step": 7})  # mmengine writes val rows without "val/"
    rows.append({"loss": 1.0})  # no step: skipped
    out = plot_curves(_write_scalars(tmp_path / "scalars.json", rows), tmp_path / "plots" / "curves.png")
    _assert_png(out)
    _assert_png(plot_curves(rows[:10], tmp_path / "train_only.png"))  # no validation rows yet


def test_val_dice_key_detection() -> None:
    assert all(map(_is_val_dice_key, ["dice", "val/dice", "sa2va/dice_best", "val/mDice"]))
    assert not any(map(_is_val_dice_key, ["loss_dice", "val/loss_dice", "cl_dice", "val/cIoU", "dicey/x"]))


def test_plot_curves_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no usable rows"):
        plot_curves(_write_scalars(tmp_path / "s.json", [{"lr": 1e-4, "step": 1}]), tmp_path / "x.png")
    bad = tmp_path / "bad.json"
    bad.write_text('{"loss": 1, "step": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        plot_curves(bad, tmp_path / "x.png")


def test_plot_pr_curve(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ev = SegEvaluator()
    for i in range(3):
        gt = rng.random((32, 32)) < 0.2
        ev.add(np.clip(0.5 * gt + 0.6 * rng.random(gt.shape), 0, 1), gt, f"q{i}")
    best = ev.best_threshold()
    _assert_png(plot_pr_curve(ev, best, tmp_path / "pr.png"))
    with pytest.raises(ValueError, match="not on the evaluator grid"):
        plot_pr_curve(ev, 0.123, tmp_path / "pr2.png")


def test_overlay_and_error_map_colours() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 1] = 100
    pred = np.array([[True, False, False], [False, False, True]])
    out = overlay(image, pred, color=(255, 0, 0), alpha=0.5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [128, 50, 0])  # rint(127.5) = 128, 100 * 0.5
    np.testing.assert_array_equal(out[0, 1], [0, 100, 0])  # untouched
    assert image[0, 0, 0] == 0  # input not modified
    grey = overlay(np.full((2, 3), 10, np.uint8), pred, (0, 0, 255), 1.0)
    np.testing.assert_array_equal(grey[1, 2], [0, 0, 255])
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(image, pred, alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), pred)

    gt = np.array([[True, True], [False, False]])
    pr = np.array([[True, False], [True, False]])
    errors = error_map(gt, pr)
    assert tuple(errors[0, 0]) == ERROR_COLORS["TP"] == (255, 255, 255)
    assert tuple(errors[0, 1]) == ERROR_COLORS["FN"] == (0, 0, 255)
    assert tuple(errors[1, 0]) == ERROR_COLORS["FP"] == (255, 0, 0)
    assert tuple(errors[1, 1]) == ERROR_COLORS["TN"]


def test_overlay_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        gt = rng.random((48, 64)) < 0.1
        pred = gt ^ (rng.random((48, 64)) < 0.05)
        rows.append((image, gt, pred, f"example {i}"))
    _assert_png(overlay_grid(rows, tmp_path / "grid.png"))
    with pytest.raises(ValueError, match="at least one row"):
        overlay_grid([], tmp_path / "empty.png")
