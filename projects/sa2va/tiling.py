"""Tiled full-resolution prediction: overlapping windows, blended with a smooth weight.

An image far larger than the model input (SAM2: 1024 px, mask logits 256 x 256) loses thin
structures when its mask comes back through the low-resolution grid. Tiling predicts each
``window x window`` crop at the model's own resolution and blends the per-window probability maps
back into one ``[H, W]`` map. Everything here is model-free (numpy only):

* :func:`window_starts` / :func:`num_windows`: where the windows of one axis start. Along an axis
  of ``length`` pixels with window ``w`` and overlap fraction ``o`` the stride is at most
  ``s = w - round(o * w)`` (at least 1) and the count is ``1`` if ``length <= w`` else
  ``ceil((length - w) / s) + 1``; the starts are spread evenly from ``0`` to ``length - w`` (the
  last window is aligned to the far edge), so neighbours overlap by at least ``round(o * w)`` px.
  An axis shorter than the window gets one window of the axis' full length.
* :func:`tile_windows`: the 2-D windows (row-major), each a :class:`Window`.
* :func:`window_weights`: the blend weight of one window, ``[h, w]`` float64 in ``(0, 1]``: the
  outer product of two 1-D profiles that are 1 except over the overlap with a neighbour, where they
  rise as a raised cosine ``sin^2(pi * (j + 0.5) / (2 r))`` (``j`` = pixel index into an overlap of
  ``r`` px). Two neighbours' ramps over the same overlap sum to exactly 1 (a partition of unity, when
  no pixel lies in more than two windows along an axis), no weight is 0, and an image border is
  never ramped: every pixel has a positive total weight.
* :class:`WindowBlender`: accumulates ``sum(weight * map)`` and ``sum(weight)`` window by window and
  returns their ratio, so a constant map (or any map that is a function of global coordinates) is
  reconstructed exactly up to float rounding, whatever the window layout.
* :class:`TilingOptions`: ``mode`` ``'off'`` / ``'on'`` / ``'auto'`` (tile only an image with a
  side larger than the window), window side (default: the model's SAM2 input size), overlap.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "TILE_MODES",
    "TilingOptions",
    "Window",
    "WindowBlender",
    "add_tiling_args",
    "blend_windows",
    "iter_chunks",
    "num_windows",
    "tile_windows",
    "tiling_kwargs",
    "window_profile",
    "window_starts",
    "window_weights",
]

#: ``--tile`` choices: never, always, or only for an image with a side larger than the window.
TILE_MODES = ("off", "on", "auto")
DEFAULT_OVERLAP = 0.25


def _check_overlap(overlap: float) -> float:
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap!r}")
    return float(overlap)


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _stride(window: int, overlap: float) -> int:
    """Largest stride between window starts: ``window - round(overlap * window)``, at least 1."""
    return max(1, window - round(_check_overlap(overlap) * window))


def num_windows(length: int, window: int, overlap: float = DEFAULT_OVERLAP) -> int:
    """Windows along one axis: ``1`` if ``length <= window`` else ``ceil((length - window) / s) + 1``
    with ``s = max(1, window - round(overlap * window))``."""
    length = _check_positive(length, "length")
    window = _check_positive(window, "window")
    if length <= window:
        return 1
    return math.ceil((length - window) / _stride(window, overlap)) + 1


def window_starts(length: int, window: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Start offsets of the windows along one axis (see the module docstring).

    Returns:
        ``[k]`` increasing ints: ``[0]`` if ``length <= window``, else evenly spread
        ``round(i * (length - window) / (k - 1))`` for ``i = 0..k-1`` (first 0, last ``length - window``),
        ``k`` = :func:`num_windows`. Consecutive starts differ by at most the stride ``s``.
    """
    k = num_windows(length, window, overlap)
    if k == 1:
        return [0]
    span = length - window
    return [round(i * span / (k - 1)) for i in range(k)]


@dataclass(frozen=True)
class Window:
    """One crop ``image[top : top + height, left : left + width]`` of an image, in pixels."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices selecting the window from an ``[H, W, ...]`` array."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Crop the first two axes: ``[H, W, ...]`` (e.g. an ``[H, W, 3]`` image) ->
        ``[height, width, ...]`` (a view)."""
        rows, cols = self.slices
        return array[rows, cols]


def tile_windows(height: int, width: int, window: int, overlap: float = DEFAULT_OVERLAP) -> list[Window]:
    """Overlapping windows covering an ``height x width`` image, row-major.

    Each window is ``min(window, height) x min(window, width)`` pixels; there are
    ``num_windows(height, ...) * num_windows(width, ...)`` of them and their union is the image.
    """
    tops = window_starts(height, window, overlap)
    lefts = window_starts(width, window, overlap)
    h, w = min(window, height), min(window, width)
    return [Window(t, left, h, w) for t in tops for left in lefts]


def window_profile(start: int, size: int, prev_end: int | None, next_start: int | None) -> np.ndarray:
    """1-D blend weight ``[size]`` float64 of a window ``[start, start + size)`` along one axis.

    Args:
        start, size: the window's extent on the axis.
        prev_end: end (exclusive) of the previous window on this axis, ``None`` at the image border.
        next_start: start of the next window on this axis, ``None`` at the image border.

    Returns:
        ``rise * fall``: ``rise`` is ``sin^2(pi * (j + 0.5) / (2 r))`` over the first ``r = prev_end -
        start`` pixels (the overlap with the previous window) and 1 after; ``fall`` the mirror image
        over the overlap with the next window. All values in ``(0, 1]``.
    """
    j = np.arange(size, dtype=np.float64)
    out = np.ones(size, dtype=np.float64)
    if prev_end is not None and prev_end > start:
        r = prev_end - start
        out *= np.where(j < r, np.sin(np.pi * (j + 0.5) / (2 * r)) ** 2, 1.0)
    if next_start is not None and next_start < start + size:
        r = start + size - next_start
        m = size - 1 - j  # distance from the window's far end
        out *= np.where(m < r, np.sin(np.pi * (m + 0.5) / (2 * r)) ** 2, 1.0)
    return out


def _axis_profiles(length: int, window: int, overlap: float) -> list[np.ndarray]:
    starts = window_starts(length, window, overlap)
    size = min(window, length)
    return [
        window_profile(
            s,
            size,
            None if i == 0 else starts[i - 1] + size,
            None if i == len(starts) - 1 else starts[i + 1],
        )
        for i, s in enumerate(starts)
    ]


def window_weights(
    height: int, width: int, window: int, overlap: float = DEFAULT_OVERLAP
) -> list[np.ndarray]:
    """Blend weights of the :func:`tile_windows` windows, in the same order.

    Returns:
        one ``[h, w]`` float64 array in ``(0, 1]`` per window (outer product of the row and column
        :func:`window_profile`).
    """
    rows = _axis_profiles(height, window, overlap)
    cols = _axis_profiles(width, window, overlap)
    return [np.outer(r, c) for r in rows for c in cols]


class WindowBlender:
    """Weighted average of per-window maps into one full-size map.

    Args:
        height, width: the full image size.
        window, overlap: the layout (:func:`tile_windows`); ``windows`` / ``weights`` hold it.
        channels: maps per window (e.g. ``n`` masks): every :meth:`add` takes ``[channels, h, w]``.

    :meth:`add` may be called several times for the same window (e.g. a flipped view): the result
    is then the plain mean of those maps at equal weight.
    """

    def __init__(self, height: int, width: int, window: int, overlap: float, channels: int) -> None:
        self.height = _check_positive(height, "height")
        self.width = _check_positive(width, "width")
        self.channels = int(channels)
        if self.channels < 0:
            raise ValueError(f"channels must be >= 0, got {channels}")
        self.windows = tile_windows(self.height, self.width, window, overlap)
        self.weights = window_weights(self.height, self.width, window, overlap)
        self._index = {win: i for i, win in enumerate(self.windows)}
        self._num = np.zeros((self.channels, self.height, self.width), dtype=np.float64)
        self._den = np.zeros((self.height, self.width), dtype=np.float64)
        self.added = 0

    def add(self, window: Window, maps: np.ndarray) -> None:
        """Accumulate ``maps`` ``[channels, window.height, window.width]`` of one of :attr:`windows`."""
        if window not in self._index:
            raise ValueError(f"{window} is not a window of this {self.height}x{self.width} layout")
        maps = np.asarray(maps)
        expected = (self.channels, window.height, window.width)
        if maps.shape != expected:
            raise ValueError(f"maps of {window} must have shape {expected}, got {maps.shape}")
        weight = self.weights[self._index[window]]
        rows, cols = window.slices
        self._num[:, rows, cols] += weight * maps
        self._den[rows, cols] += weight
        self.added += 1

    def result(self) -> np.ndarray:
        """The blended ``[channels, H, W]`` float32 map.

        Raises:
            ValueError: if some pixel was covered by no added window.
        """
        if not (self._den > 0).all():
            missing = int((self._den <= 0).sum())
            raise ValueError(f"{missing} pixels of the {self.height}x{self.width} image got no window")
        return (self._num / self._den).astype(np.float32)


def blend_windows(
    maps: Sequence[np.ndarray], height: int, width: int, window: int, overlap: float = DEFAULT_OVERLAP
) -> np.ndarray:
    """Blend one ``[C, h, w]`` map per :func:`tile_windows` window into ``[C, H, W]`` float32."""
    windows = tile_windows(height, width, window, overlap)
    if len(maps) != len(windows):
        raise ValueError(f"got {len(maps)} maps for {len(windows)} windows")
    channels = int(np.asarray(maps[0]).shape[0]) if maps else 0
    blender = WindowBlender(height, width, window, overlap, channels)
    for win, m in zip(windows, maps):
        blender.add(win, m)
    return blender.result()


@dataclass(frozen=True)
class TilingOptions:
    """When and how an image is predicted window by window.

    Attributes:
        mode: ``'off'`` (whole image, the default), ``'on'`` (always windows; an image no larger than
            the window is one window) or ``'auto'`` (windows only when the image's height or width
            exceeds the window).
        window: window side in px; ``None``: the model's SAM2 input size (1024 for the released
            models), the size at which its masks are predicted.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)`` (default 0.25).
    """

    mode: str = "off"
    window: int | None = None
    overlap: float = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.mode not in TILE_MODES:
            raise ValueError(f"tile mode must be one of {TILE_MODES}, got {self.mode!r}")
        if self.window is not None:
            _check_positive(self.window, "tile window")
        _check_overlap(self.overlap)

    @classmethod
    def parse(cls, value: TilingOptions | dict | str | None) -> TilingOptions:
        """A :class:`TilingOptions` from itself, a dict of its fields, a mode string, or ``None`` (off)."""
        if value is None:
            return cls()
        if isinstance(value, TilingOptions):
            return value
        if isinstance(value, str):
            return cls(mode=value)
        if isinstance(value, dict):
            unknown = set(value) - {"mode", "window", "overlap"}
            if unknown:
                raise ValueError(f"unknown tiling option(s) {sorted(unknown)} (mode, window, overlap)")
            return cls(**value)
        raise TypeError(
            f"tiling must be a TilingOptions, dict, mode string or None, got {type(value).__name__}"
        )

    def window_for(self, model_size: int) -> int:
        """The window side in px: :attr:`window`, else ``model_size``."""
        return int(self.window) if self.window is not None else _check_positive(model_size, "model_size")

    def applies(self, height: int, width: int, model_size: int) -> bool:
        """Whether an ``height x width`` image is predicted window by window."""
        if self.mode == "off":
            return False
        if self.mode == "on":
            return True
        side = self.window_for(model_size)
        return height > side or width > side

    def windows(self, height: int, width: int, model_size: int) -> list[Window]:
        """The windows of an ``height x width`` image (one whole-image window when not tiled)."""
        if not self.applies(height, width, model_size):
            return [Window(0, 0, height, width)]
        return tile_windows(height, width, self.window_for(model_size), self.overlap)


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    size = _check_positive(size, "chunk size")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _overlap_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def _window_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer (pixels), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (pixels), got {text!r}")
    return value


def add_tiling_args(parser: argparse.ArgumentParser) -> None:
    """``--tile off|on|auto``, ``--tile-size PX``, ``--tile-overlap F``, ``--flip-tta`` (read back by
    :func:`tiling_kwargs`)."""
    parser.add_argument(
        "--tile",
        choices=TILE_MODES,
        default="off",
        help="predict masks window by window at full resolution: auto = only images with a side larger "
        "than the window, on = always, off = the whole image at once (default)",
    )
    parser.add_argument(
        "--tile-size",
        type=_window_arg,
        help="window side in px (default: the model's SAM2 input size, 1024 for the released models)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=_overlap_arg,
        default=DEFAULT_OVERLAP,
        help=f"fraction of a window shared with its neighbour (default {DEFAULT_OVERLAP})",
    )
    parser.add_argument(
        "--flip-tta",
        action="store_true",
        help="flip test-time augmentation: also predict the left-right mirrored image (or window) and "
        "average the probabilities, mirrored back",
    )


def tiling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``{"tiling": TilingOptions, "flip_tta": bool}`` from :func:`add_tiling_args` options."""
    return {
        "tiling": TilingOptions(mode=args.tile, window=args.tile_size, overlap=args.tile_overlap),
        "flip_tta": bool(args.flip_tta),
    }
