"""Window layout and blending of tiled prediction (model-free)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from projects.sa2va.tiling import (
    TilingOptions,
    Window,
    WindowBlender,
    blend_windows,
    num_windows,
    tile_windows,
    window_profile,
    window_starts,
    window_weights,
)

SIZES = [(1, 1), (7, 5), (255, 256), (256, 256), (257, 256), (513, 1023), (1000, 333), (999, 960)]
LAYOUTS = [(256, 0.25), (256, 0.0), (256, 0.5), (100, 0.1), (64, 0.75), (97, 0.33)]


@pytest.mark.parametrize("window,overlap", LAYOUTS)
@pytest.mark.parametrize("length", [1, 50, 63, 64, 65, 96, 97, 98, 255, 256, 257, 511, 512, 1000, 1025])
def test_window_count_formula_and_edge_alignment(length: int, window: int, overlap: float) -> None:
    starts = window_starts(length, window, overlap)
    stride = max(1, window - round(overlap * window))
    expected = 1 if length <= window else math.ceil((length - window) / stride) + 1
    assert num_windows(length, window, overlap) == len(starts) == expected
    size = min(window, length)
    assert starts[0] == 0 and starts[-1] + size == length  # first at 0, last aligned to the far edge
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= stride).all()  # overlap at least round(overlap * window)
    # fewer windows could not keep the stride: k - 1 steps of at most `stride` must span length - window
    if len(starts) > 1:
        assert (len(starts) - 2) * stride < length - window


def test_known_layouts() -> None:
    assert window_starts(512, 256, 0.25) == [0, 128, 256]  # stride 192 -> 3 windows, spread evenly
    assert window_starts(1000, 1024, 0.25) == [0]
    assert window_starts(2000, 1024, 0.25) == [0, 488, 976]
    assert num_windows(3504, 1024, 0.25) == 5  # a 3504 x 2336 fundus photograph: 5 x 3 windows
    assert len(tile_windows(2336, 3504, 1024, 0.25)) == 3 * 5


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("window,overlap", LAYOUTS)
def test_windows_cover_every_pixel_inside_the_image(
    height: int, width: int, window: int, overlap: float
) -> None:
    windows = tile_windows(height, width, window, overlap)
    assert len(windows) == num_windows(height, window, overlap) * num_windows(width, window, overlap)
    count = np.zeros((height, width), dtype=np.int64)
    for win in windows:
        assert win.height == min(window, height) and win.width == min(window, width)
        assert win.top >= 0 and win.top + win.height <= height
        assert win.left >= 0 and win.left + win.width <= width
        rows, cols = win.slices
        count[rows, cols] += 1
    assert (count >= 1).all()


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("window,overlap", LAYOUTS)
def test_weights_positive_and_constant_maps_blend_to_the_constant(
    height: int, width: int, window: int, overlap: float
) -> None:
    weights = window_weights(height, width, window, overlap)
    assert all(w.min() > 0 and w.max() <= 1.0 for w in weights)
    windows = tile_windows(height, width, window, overlap)
    maps = [np.full((2, w.height, w.width), [[[0.3]], [[1.0]]]) for w in windows]
    out = blend_windows(maps, height, width, window, overlap)
    assert out.shape == (2, height, width) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], np.float32(0.3))
    np.testing.assert_array_equal(out[1], np.float32(1.0))


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("window,overlap", LAYOUTS)
def test_function_of_global_coordinates_is_reconstructed(
    height: int, width: int, window: int, overlap: float
) -> None:
    yy, xx = np.mgrid[0:height, 0:width]
    field = np.stack([np.sin(yy * 0.37) * np.cos(xx * 0.11) * 0.5 + 0.5, (yy * 7 + xx * 3) % 11 / 10.0])
    windows = tile_windows(height, width, window, overlap)
    maps = [field[:, w.top : w.top + w.height, w.left : w.left + w.width] for w in windows]
    out = blend_windows(maps, height, width, window, overlap)
    np.testing.assert_allclose(out, field.astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "height,window,overlap", [(640, 256, 0.25), (600, 256, 0.25), (512, 256, 0.5), (370, 100, 0.1)]
)
def test_two_window_ramps_are_a_partition_of_unity(height: int, window: int, overlap: float) -> None:
    """Where no pixel is in more than two windows per axis, the raw weights already sum to 1."""
    width = window
    weights = window_weights(height, width, window, overlap)
    total = np.zeros((height, width))
    for win, wt in zip(tile_windows(height, width, window, overlap), weights):
        rows, cols = win.slices
        total[rows, cols] += wt
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_profile_ramps_only_towards_neighbours() -> None:
    alone = window_profile(0, 8, None, None)
    np.testing.assert_array_equal(alone, 1.0)
    first = window_profile(0, 8, None, 6)  # next window starts at 6: ramp over the last 2 px
    np.testing.assert_array_equal(first[:6], 1.0)
    np.testing.assert_allclose(first[6:], [np.sin(np.pi * 1.5 / 4) ** 2, np.sin(np.pi * 0.5 / 4) ** 2])
    second = window_profile(6, 8, 8, None)  # previous ends at 8: ramp over its first 2 px
    np.testing.assert_allclose(first[6:] + second[:2], 1.0)


def test_blend_is_seamless_across_a_step_between_windows() -> None:
    """Two windows that disagree (0 vs 1) give a monotone raised-cosine transition, no jump."""
    height, width, window, overlap = 10, 40, 24, 1 / 3
    windows = tile_windows(height, width, window, overlap)
    assert [w.left for w in windows] == [0, 16]
    maps = [np.zeros((1, 10, 24)), np.ones((1, 10, 24))]
    out = blend_windows(maps, height, width, window, overlap)[0, 0]
    np.testing.assert_array_equal(out[:16], 0.0)
    np.testing.assert_array_equal(out[24:], 1.0)
    assert (np.diff(out) >= 0).all() and np.abs(np.diff(out)).max() < 0.25


def test_blender_mean_of_repeated_views_and_errors() -> None:
    blender = WindowBlender(6, 6, 4, 0.25, channels=1)
    for win in blender.windows:
        blender.add(win, np.full((1, 4, 4), 0.2))
        blender.add(win, np.full((1, 4, 4), 0.6))
    np.testing.assert_allclose(blender.result(), 0.4, atol=1e-7)
    with pytest.raises(ValueError, match="not a window"):
        blender.add(Window(1, 1, 4, 4), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        blender.add(blender.windows[0], np.zeros((2, 4, 4)))
    empty = WindowBlender(6, 6, 4, 0.25, channels=1)
    empty.add(empty.windows[0], np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="got no window"):
        empty.result()


def test_tiling_options() -> None:
    assert TilingOptions.parse(None).mode == "off"
    auto = TilingOptions.parse("auto")
    assert not auto.applies(1024, 1000, 1024) and auto.applies(1025, 1000, 1024)
    assert auto.windows(1000, 900, 1024) == [Window(0, 0, 1000, 900)]
    assert len(auto.windows(2000, 900, 1024)) == 3
    on = TilingOptions.parse({"mode": "on", "window": 256, "overlap": 0.5})
    assert on.applies(10, 10, 1024) and on.windows(10, 10, 1024) == [Window(0, 0, 10, 10)]
    assert not TilingOptions("off").applies(5000, 5000, 1024)
    for bad in ({"mode": "sometimes"}, {"overlap": 1.0}, {"overlap": -0.1}, {"window": 0}, {"size": 3}):
        with pytest.raises(ValueError):
            TilingOptions.parse(bad)
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 10, 1.5)
