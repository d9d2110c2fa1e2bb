"""Resolution ceiling: hand-computed thin-line cases and cv2 / torch interpolation equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from projects.sa2va.evaluation.resolution import (
    CEILING_MODES,
    ceiling_dice,
    resize_area,
    resize_bilinear,
    resize_nearest,
    summarize_ceilings,
)


def _torch_resize(x: np.ndarray, size: tuple[int, int], **kw) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[None, None], size, **kw)[0, 0].numpy()


def _bilinear_float64(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize in float64 (the align_corners=False formula)."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, wy = axis(height, x.shape[0])
    x0, x1, wx = axis(width, x.shape[1])
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
    bottom = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


@pytest.mark.parametrize(
    ("src", "dst"),
    [((256, 256), (512, 512)), ((256, 256), (1024, 1024)), ((512, 512), (256, 256)), ((7, 5), (13, 11))],
)
def test_cv2_bilinear_equals_torch(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random(src).astype(np.float32)
    ours = resize_bilinear(x, *dst)
    np.testing.assert_allclose(ours, _torch_resize(x, dst, mode="bilinear", align_corners=False), atol=1e-5)


def test_cv2_bilinear_non_integer_scale() -> None:
    # 256 -> 999x960: cv2 matches the exact float64 formula; torch computes the source coordinate in
    # float32 (error ~2e-5 at coordinates ~250), so it is compared with a looser bound.
    x = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    ours = resize_bilinear(x, 999, 960)
    np.testing.assert_allclose(ours, _bilinear_float64(x, 999, 960), atol=1e-6)
    np.testing.assert_allclose(
        ours, _torch_resize(x, (999, 960), mode="bilinear", align_corners=False), atol=1e-4
    )


@pytest.mark.parametrize(
    ("src", "dst"), [((512, 512), (256, 256)), ((999, 960), (256, 256)), ((256, 256), (999, 960))]
)
def test_cv2_nearest_equals_torch_nearest(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = np.random.default_rng(2).random(src).astype(np.float32)
    np.testing.assert_array_equal(resize_nearest(x, *dst), _torch_resize(x, dst, mode="nearest"))


def test_cv2_area_is_box_mean_for_integer_factor() -> None:
    x = np.random.default_rng(3).random((512, 512)).astype(np.float32)
    expected = F.avg_pool2d(torch.from_numpy(x)[None, None], 2)[0, 0].numpy()
    np.testing.assert_allclose(resize_area(x, 256, 256), expected, atol=1e-6)


def _line(rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
    m = np.zeros((512, 512), dtype=bool)
    m[rows if rows is not None else slice(None), cols if cols is not None else slice(None)] = True
    return m


def test_thin_lines_by_hand() -> None:
    # 1-px full-width line on an even row 100: nearest keeps it as low row 50; bilinear up gives 0.75 on
    # rows 100 and 101 (0.25 on 99 and 102) -> 2 predicted rows for 1 true row -> Dice 2/3.
    even = _line(rows=slice(100, 101))
    assert ceiling_dice(even, "low_nearest") == pytest.approx(2 / 3)
    # the area-averaged target is 0.5 on low row 50; bilinear up never exceeds 0.5 -> empty -> Dice 0
    assert ceiling_dice(even, "low_soft") == 0.0
    # odd row 101: nearest (src row = 2 * dst row) never samples it -> empty prediction -> Dice 0
    assert ceiling_dice(_line(rows=slice(101, 102)), "low_nearest") == 0.0
    # the same holds for a vertical line
    assert ceiling_dice(_line(cols=slice(100, 101)), "low_nearest") == pytest.approx(2 / 3)
    # a 2-px line aligned with the 2x grid survives both modes exactly
    aligned = _line(rows=slice(100, 102))
    assert ceiling_dice(aligned, "low_nearest") == 1.0
    assert ceiling_dice(aligned, "low_soft") == 1.0


def test_full_is_one_and_low_modes_are_below_one_on_thin_curves() -> None:
    gt = np.zeros((512, 512), dtype=bool)
    t = np.linspace(0, 2 * np.pi, 4000)
    gt[(256 + 200 * np.sin(t)).astype(int), (256 + 180 * np.sin(2 * t)).astype(int)] = True
    assert ceiling_dice(gt, "full") == 1.0
    assert ceiling_dice(torch.from_numpy(gt), "full") == 1.0
    assert ceiling_dice(gt, "low_nearest") < 1.0
    assert ceiling_dice(gt, "low_soft") < 1.0
    assert ceiling_dice(gt, "low_nearest", low_res=512) == 1.0  # no resolution loss at 512


def test_empty_gt_and_errors() -> None:
    empty = np.zeros((64, 64), dtype=bool)
    for mode in CEILING_MODES:
        assert ceiling_dice(empty, mode) == 1.0
    with pytest.raises(ValueError, match="unknown ceiling mode 'bicubic'"):
        ceiling_dice(empty, "bicubic")
    with pytest.raises(ValueError, match="low_res must be positive, got 0"):
        ceiling_dice(empty, "low_soft", low_res=0)


def test_summarize_ceilings() -> None:
    masks = [_line(rows=slice(100, 101)), _line(rows=slice(100, 102))]
    stats = summarize_ceilings(masks)
    assert stats["low_nearest"] == {
        "mean": pytest.approx(5 / 6),
        "min": pytest.approx(2 / 3),
        "max": 1.0,
        "n": 2,
    }
    assert stats["full"]["mean"] == 1.0
    with pytest.raises(ValueError, match="at least one mask"):
        summarize_ceilings([])
