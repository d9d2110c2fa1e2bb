"""Plots for training and evaluation (matplotlib, Agg backend; nothing is shown on screen).

* :func:`plot_curves`: training losses and validation Dice from mmengine's ``vis_data/scalars.json``.
* :func:`plot_pr_curve`: pooled precision-recall and mean Dice over the threshold grid.
* :func:`overlay_grid`: image / ground truth / prediction / error map, one row per example.
  Error colours: TP white, FP red, FN blue, TN black (see :data:`ERROR_COLORS`).
* :func:`overlay`: blend a mask into an image (also used by predictors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from projects.sa2va.evaluation.metrics import as_bool_mask

if TYPE_CHECKING:
    from projects.sa2va.evaluation.metrics import SegEvaluator

__all__ = [
    "ERROR_COLORS",
    "error_map",
    "load_scalars",
    "overlay",
    "overlay_grid",
    "plot_curves",
    "plot_pr_curve",
]

ERROR_COLORS: dict[str, tuple[int, int, int]] = {
    "TP": (255, 255, 255),
    "FP": (255, 0, 0),
    "FN": (0, 0, 255),
    "TN": (0, 0, 0),
}
_VAL_DICE_KEY = re.compile(r"(^|/)(m?dice)[^/]*$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------
# training curves
# ----------------------------------------------------------------------------------------------
def load_scalars(path: str | Path) -> list[dict[str, Any]]:
    """Read an mmengine ``scalars.json`` (one JSON object per line; blank lines skipped).

    Raises:
        FileNotFoundError: if the file is missing. ValueError: on a line that is not a JSON object.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg}): {line[:80]!r}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _step(row: dict[str, Any]) -> float | None:
    for name in ("step", "iter", "epoch"):
        value = row.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


def _is_val_dice_key(key: str) -> bool:
    return not key.split("/")[-1].lower().startswith("loss") and bool(_VAL_DICE_KEY.search(key))


def _series(
    rows: Iterable[dict[str, Any]], select: Callable[[str], bool]
) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (steps, values)}`` for numeric values whose key passes ``select``."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = _step(row)
        if step is None:
            continue
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and select(key):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(step)
                ys.append(float(value))
    return out


def plot_curves(log_json_or_scalars: str | Path | Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Plot training losses (every key starting with ``loss``) and validation Dice.

    Validation Dice series are keys whose last ``/`` component starts with ``dice`` or ``mdice``
    and not with ``loss`` (``dice``, ``val/dice``, ``sa2va/dice_best``; mmengine 0.10 strips the
    ``val/`` prefix when it writes validation rows). The x axis is ``step``, else ``iter``, else
    ``epoch`` (validation rows carry the epoch as ``step`` when ``log_metric_by_epoch`` is on);
    rows with none of them are skipped, as are non-numeric values.

    Args:
        log_json_or_scalars: path to ``vis_data/scalars.json`` or its rows as dicts.
        out_png: output PNG path (parent folders are created).

    Returns:
        ``out_png`` as a Path.

    Raises:
        ValueError: if no row holds a loss or a validation Dice with a step.
    """
    if isinstance(log_json_or_scalars, str | Path):
        rows, source = load_scalars(log_json_or_scalars), str(log_json_or_scalars)
    else:
        rows, source = list(log_json_or_scalars), "the given rows"
    losses = _series(rows, lambda k: k.split("/")[-1].startswith("loss"))
    dices = _series(rows, _is_val_dice_key)
    if not losses and not dices:
        raise ValueError(
            f"{source}: no usable rows (need 'loss*' or 'val/dice'-like values with a 'step' or 'iter')"
        )
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    _draw_series(ax_loss, losses, "training loss", "loss")
    _draw_series(ax_dice, dices, "validation Dice", "Dice", marker="o")
    fig.tight_layout()
    return _save(fig, out_png)


def _draw_series(
    ax, series: dict[str, tuple[list[float], list[float]]], title: str, ylabel: str, **kw
) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    for key, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=key, linewidth=1.2, **kw)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------
# threshold curves
# ----------------------------------------------------------------------------------------------
def plot_pr_curve(evaluator: SegEvaluator, best_threshold: float, out_png: str | Path) -> Path:
    """Pixel-pooled precision-recall over the evaluator's grid, plus mean Dice vs threshold.

    Grid values with no predicted pixel (precision undefined when pooled) are left out of the PR
    curve. The points at 0.5 (when on the grid) and at ``best_threshold`` are marked.

    Raises:
        ValueError: if ``best_threshold`` is not on the grid or the evaluator is empty.
    """
    k_best = evaluator.threshold_index(best_threshold)
    pooled = evaluator.pooled_counts()
    tp, fp, fn = (pooled[n].astype(np.float64) for n in ("tp", "fp", "fn"))
    valid = (tp + fp) > 0
    prec = np.divide(tp, tp + fp, out=np.full_like(tp, np.nan), where=valid)
    rec = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    grid = evaluator.thresholds
    fig, (ax_pr, ax_dice) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_pr.plot(rec[valid], prec[valid], "-", color="tab:blue", linewidth=1.2)
    marks = [(k_best, f"best t={grid[k_best]:.2f}", "tab:red")]
    if np.isclose(grid, 0.5, atol=1e-9).any():
        marks.append((evaluator.threshold_index(0.5), "t=0.50", "tab:gray"))
    for k, label, color in marks:
        if valid[k]:
            ax_pr.plot(rec[k], prec[k], "o", color=color, label=label)
    ax_pr.set(xlabel="recall (pooled pixels)", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax_pr.set_title("precision-recall over thresholds")
    ax_pr.grid(alpha=0.3)
    ax_pr.legend(fontsize=8)
    dice_curve = evaluator.curve("dice")
    ax_dice.plot(grid, dice_curve, color="tab:green", linewidth=1.2, label="mean per-query Dice")
    ax_dice.axvline(grid[k_best], color="tab:red", linestyle="--", label=f"best t={grid[k_best]:.2f}")
    ax_dice.set(xlabel="threshold (prob > t)", ylabel="Dice", title="Dice vs threshold")
    ax_dice.grid(alpha=0.3)
    ax_dice.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


# ----------------------------------------------------------------------------------------------
# image overlays
# ----------------------------------------------------------------------------------------------
def _as_rgb_uint8(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    raise ValueError(f"image must be [H, W] or [H, W, 3] uint8, got shape {arr.shape}")


def overlay(
    image: np.ndarray, pred: Any, color: Sequence[int] = (255, 0, 0), alpha: float = 0.5
) -> np.ndarray:
    """Blend ``color`` into ``image`` where ``pred`` is set.

    Args:
        image: ``[H, W, 3]`` (or grey ``[H, W]``) uint8 RGB.
        pred: ``[H, W]`` bool mask.
        color: RGB triple 0..255.
        alpha: weight of ``color`` inside the mask, in ``[0, 1]``.

    Returns:
        ``[H, W, 3]`` uint8 (a new array; ``image`` is not modified).

    Raises:
        ValueError: on shape mismatch, a bad colour or ``alpha`` outside ``[0, 1]``.
    """
    rgb = _as_rgb_uint8(image)
    mask = as_bool_mask(pred, "pred")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"pred shape {mask.shape} differs from image shape {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    col = np.asarray(color, dtype=np.float32)
    if col.shape != (3,) or (col < 0).any() or (col > 255).any():
        raise ValueError(f"color must be an RGB triple in 0..255, got {color!r}")
    out = rgb.copy()
    blended = (1.0 - alpha) * rgb[mask].astype(np.float32) + alpha * col
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def error_map(gt: Any, pred: Any) -> np.ndarray:
    """Colour-coded errors ``[H, W, 3]`` uint8: TP white, FP red, FN blue, TN black."""
    gt_b, pred_b = as_bool_mask(gt, "gt"), as_bool_mask(pred, "pred")
    if gt_b.shape != pred_b.shape:
        raise ValueError(f"pred shape {pred_b.shape} differs from gt shape {gt_b.shape}")
    out = np.zeros((*gt_b.shape, 3), dtype=np.uint8)
    out[gt_b & pred_b] = ERROR_COLORS["TP"]
    out[~gt_b & pred_b] = ERROR_COLORS["FP"]
    out[gt_b & ~pred_b] = ERROR_COLORS["FN"]
    return out


def overlay_grid(rows: Sequence[tuple[np.ndarray, Any, Any, str]], out_png: str | Path) -> Path:
    """One row per example: image / ground truth / prediction / errors (TP white, FP red, FN blue).

    Args:
        rows: ``(image [H, W, 3] uint8, gt [H, W] bool, pred [H, W] bool, title)`` tuples.
        out_png: output PNG path.

    Raises:
        ValueError: if ``rows`` is empty or a row has mismatched shapes.
    """
    if not rows:
        raise ValueError("overlay_grid needs at least one row")
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.2 * len(rows)), squeeze=False)
    for r, (image, gt, pred, title) in enumerate(rows):
        rgb = _as_rgb_uint8(image)
        panels = [
            (rgb, title),
            (overlay(rgb, gt, (0, 255, 0), 0.6), "ground truth"),
            (overlay(rgb, pred, (255, 255, 0), 0.6), "prediction"),
            (error_map(gt, pred), "errors"),
        ]
        for ax, (panel, name) in zip(axes[r], panels):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    legend = [
        Patch(facecolor=np.asarray(c) / 255.0, edgecolor="gray", label=n) for n, c in ERROR_COLORS.items()
    ]
    axes[0, 3].legend(handles=legend[:3], loc="upper right", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    return _save(fig, out_png)
