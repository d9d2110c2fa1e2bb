"""Resolution ceiling: the Dice a *perfect* prediction reaches when masks pass through a low-res grid.

SAM2 predicts 256x256 logits whatever the input size; the reference trains them against the
ground truth nearest-resized to 256x256 and upsamples them bilinearly at inference. For 1-3 px
wide vessels that round trip alone costs Dice. Modes (``gt: [H, W]`` bool, ``L = low_res``):

* ``"low_nearest"`` (the reference target): ``gt`` -> ``cv2.INTER_NEAREST`` to ``L x L`` ({0,1})
  -> ``cv2.INTER_LINEAR`` back to ``H x W`` -> ``> 0.5``.
* ``"low_soft"``: ``gt`` -> ``cv2.INTER_AREA`` to ``L x L`` (area-averaged soft target in [0, 1])
  -> ``cv2.INTER_LINEAR`` back -> ``> 0.5``.
* ``"full"``: ``gt`` as float ``{0, 1}`` -> ``> 0.5`` (1.0 by construction, still computed).
* ``"tiled_nearest"`` / ``"tiled_soft"``: the tiled prediction path (``predict.py --tile``,
  :mod:`projects.sa2va.tiling`): ``gt`` cut into the overlapping ``window x window``
  windows (each ``min(window, H) x min(window, W)``), each window through its own ``L x L`` grid as in
  ``"low_nearest"`` / ``"low_soft"`` and bilinearly back to the window's size, the windows blended
  with the raised-cosine weights of :class:`~projects.sa2va.tiling.WindowBlender` ->
  ``> 0.5``. An image no larger than the window is one window: the same as the low mode.

Interpolation conventions (all maps are float32, so cv2 does not use its fixed-point uint8 path):

* ``cv2.INTER_LINEAR`` uses half-pixel centres, ``src = (dst + 0.5) * in / out - 0.5`` clamped at
  the border: identical to ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
  without antialiasing (checked in ``tests/evaluation/test_eval_resolution.py``).
* ``cv2.INTER_NEAREST`` takes ``src = floor(dst * in / out)``, identical to torch ``mode="nearest"``
  (not ``"nearest-exact"``).
* ``cv2.INTER_AREA`` averages the covered input area (exact box mean for integer factors).

Not modelled: the official inference path resizes 256 -> 1024 -> H x W in two bilinear steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from projects.sa2va.evaluation.metrics import as_bool_mask, dice
from projects.sa2va.tiling import DEFAULT_OVERLAP, WindowBlender

__all__ = [
    "CEILING_MODES",
    "DEFAULT_WINDOW",
    "ceiling_dice",
    "ceiling_mask",
    "resize_area",
    "resize_bilinear",
    "resize_nearest",
    "summarize_ceilings",
]

CEILING_MODES = ("low_nearest", "low_soft", "tiled_nearest", "tiled_soft", "full")
#: Window side of the tiled modes: the SAM2 input size of the released models.
DEFAULT_WINDOW = 1024


def _resize(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D [H, W] map, got shape {image.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    src = np.ascontiguousarray(image, dtype=np.float32)
    return cv2.resize(src, (int(width), int(height)), interpolation=interpolation)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a ``[H, W]`` map to ``[height, width]`` float32 (half-pixel centres).

    Equals ``F.interpolate(x[None, None], (height, width), mode="bilinear", align_corners=False)``.
    """
    return _resize(image, height, width, cv2.INTER_LINEAR)


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of ``[H, W]`` to ``[height, width]`` float32, ``src = floor(dst * scale)``.

    Equals torch ``F.interpolate(..., mode="nearest")``.
    """
    return _resize(image, height, width, cv2.INTER_NEAREST)


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaging resize of ``[H, W]`` to ``[height, width]`` float32 (for downsampling)."""
    return _resize(image, height, width, cv2.INTER_AREA)


def _low_res_round_trip(target: np.ndarray, kind: str, low_res: int) -> np.ndarray:
    """``[h, w]`` float32 {0, 1} -> its ``low_res x low_res`` grid (``'nearest'`` / ``'soft'``) ->
    bilinear back to ``[h, w]`` float32."""
    height, width = target.shape
    if kind == "nearest":
        low = resize_nearest(target, low_res, low_res)
    else:
        low = resize_area(target, low_res, low_res)
    return resize_bilinear(low, height, width)


def ceiling_mask(
    gt: Any,
    mode: str,
    low_res: int = 256,
    *,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
) -> np.ndarray:
    """The best binary ``[H, W]`` prediction reachable in ``mode`` (see the module docstring).

    Args:
        gt: ``[H, W]`` bool ground truth (numpy or torch).
        mode: one of :data:`CEILING_MODES`.
        low_res: side of the square low-resolution grid (SAM2: 256), per window in the tiled modes.
        window / overlap: the tiled modes' window side in px and overlap fraction (unused otherwise).

    Raises:
        ValueError: on an unknown mode, a non-positive ``low_res`` or ``window``, an overlap outside
            ``[0, 1)``.
    """
    gt_b = as_bool_mask(gt, "gt")
    if low_res <= 0:
        raise ValueError(f"low_res must be positive, got {low_res}")
    height, width = gt_b.shape
    target = gt_b.astype(np.float32)
    if mode == "full":
        return target > 0.5
    if mode in ("low_nearest", "low_soft"):
        return _low_res_round_trip(target, mode.removeprefix("low_"), low_res) > 0.5
    if mode in ("tiled_nearest", "tiled_soft"):
        blender = WindowBlender(height, width, window, overlap, channels=1)
        for win in blender.windows:
            crop = np.ascontiguousarray(win.crop(target))
            blender.add(win, _low_res_round_trip(crop, mode.removeprefix("tiled_"), low_res)[None])
        return blender.result()[0] > 0.5
    raise ValueError(f"unknown ceiling mode {mode!r}; choose from {CEILING_MODES}")


def ceiling_dice(
    gt: Any, mode: str, low_res: int = 256, *, window: int = DEFAULT_WINDOW, overlap: float = DEFAULT_OVERLAP
) -> float:
    """Dice between ``ceiling_mask(gt, mode, low_res, window=, overlap=)`` and ``gt`` (``[H, W]`` bool).

    Empty ``gt`` gives 1.0 (both masks empty, see :mod:`projects.sa2va.evaluation.metrics`).
    """
    return dice(ceiling_mask(gt, mode, low_res, window=window, overlap=overlap), gt)


def summarize_ceilings(
    masks: Iterable[Any],
    modes: Iterable[str] = CEILING_MODES,
    low_res: int = 256,
    *,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
) -> dict[str, dict[str, float | int]]:
    """Ceiling Dice statistics over objects.

    Args:
        masks: iterable of ``[H, W]`` bool masks, one per object (sizes may differ).
        modes: modes to evaluate.
        low_res: side of the low-resolution grid.
        window / overlap: the tiled modes' layout.

    Returns:
        ``{mode: {"mean", "min", "max", "n"}}``.

    Raises:
        ValueError: if ``masks`` is empty.
    """
    modes = tuple(modes)
    values: dict[str, list[float]] = {mode: [] for mode in modes}
    for mask in masks:
        for mode in modes:
            values[mode].append(ceiling_dice(mask, mode, low_res, window=window, overlap=overlap))
    if not modes or not values[modes[0]]:
        raise ValueError("summarize_ceilings needs at least one mask and one mode")
    return {
        mode: {
            "mean": float(np.mean(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "n": len(v),
        }
        for mode, v in values.items()
    }
