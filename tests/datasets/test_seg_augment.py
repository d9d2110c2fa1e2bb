"""SegAugment: identity by default, image/mask alignment, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from projects.sa2va.datasets.augment import SegAugment

RED = np.array([255, 0, 0], dtype=np.uint8)


def _sample(h: int = 48, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Gray image with an asymmetric red L-shape; mask 0 = the red pixels, mask 1 = a blue square."""
    image = np.full((h, w, 3), 128, dtype=np.uint8)
    red = np.zeros((h, w), dtype=bool)
    red[8:30, 10:16] = True
    red[24:30, 10:34] = True
    blue = np.zeros((h, w), dtype=bool)
    blue[34:42, 30:40] = True
    image[red] = RED
    image[blue] = (0, 0, 255)
    return image, np.stack([red, blue])


def _is_red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)


def test_identity_by_default() -> None:
    image, masks = _sample()
    out_image, out_masks = SegAugment()(image, masks, np.random.default_rng(0))
    assert np.array_equal(out_image, image) and np.array_equal(out_masks, masks)


@pytest.mark.parametrize("shape", [(48, 48), (40, 56)])
@pytest.mark.parametrize(
    "kwargs", [{"hflip": 1.0}, {"vflip": 1.0}, {"rot90": 1.0}, {"hflip": 1.0, "rot90": 1.0}]
)
def test_exact_transforms_keep_alignment(kwargs: dict, shape: tuple[int, int]) -> None:
    image, masks = _sample(*shape)
    aug = SegAugment(**kwargs)
    for seed in range(4):
        out_image, out_masks = aug(image, masks, np.random.default_rng(seed))
        assert (
            out_image.shape == image.shape and out_masks.shape == masks.shape and out_masks.dtype == np.bool_
        )
        if "rot90" in kwargs and shape[0] != shape[1]:  # non-square: affine rotation, edges may be cropped
            red = _is_red(out_image)
            assert (red & out_masks[0]).sum() / max(red.sum(), 1) > 0.9
            assert (red & out_masks[0]).sum() / max(out_masks[0].sum(), 1) > 0.9
        else:
            assert np.array_equal(out_masks[0], _is_red(out_image))
            assert out_masks[0].sum() == masks[0].sum()
        assert not np.array_equal(out_masks[0], masks[0])


def test_rotation_and_scale_keep_alignment() -> None:
    image, masks = _sample()
    aug = SegAugment(rotate_deg=30.0, scale=(0.8, 1.2))
    for seed in range(5):
        out_image, out_masks = aug(image, masks, np.random.default_rng(seed))
        red = _is_red(out_image)
        inter = (red & out_masks[0]).sum()
        assert inter / (red | out_masks[0]).sum() > 0.8  # edges differ: bilinear image vs nearest mask
        assert not (out_masks[1] & red).any()


def test_photometric_only_touches_the_image_and_is_deterministic() -> None:
    image, masks = _sample()
    aug = SegAugment(brightness=0.3, contrast=0.3, gamma=(0.7, 1.4))
    out_image, out_masks = aug(image, masks, np.random.default_rng(1))
    assert np.array_equal(out_masks, masks) and not np.array_equal(out_image, image)
    again, _ = aug(image, masks, np.random.default_rng(1))
    assert np.array_equal(out_image, again)
    full = SegAugment(hflip=0.5, vflip=0.5, rot90=0.5, rotate_deg=10, scale=(0.9, 1.1), brightness=0.2)
    a = full(image, masks, np.random.default_rng(7))
    b = full(image, masks, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SegAugment(hflip=1.5)
    with pytest.raises(ValueError):
        SegAugment(scale=(1.2, 0.8))
    with pytest.raises(TypeError):
        SegAugment(0.5)  # keyword-only
    image, masks = _sample()
    with pytest.raises(ValueError, match="masks must be bool"):
        SegAugment(hflip=1.0)(image, masks.astype(np.uint8), np.random.default_rng(0))
