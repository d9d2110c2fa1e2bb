"""Joint image/mask augmentation for segmentation (geometric on both, photometric on the image)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["SegAugment"]


def _check_range(name: str, value: tuple[float, float], low: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low < lo <= hi:
        raise ValueError(f"{name} must be (lo, hi) with {low} < lo <= hi, got {value}")
    return lo, hi


class SegAugment:
    """Random flips, 90-degree rotations, scale and rotation, brightness/contrast/gamma.

    Every option is off by default, and then ``__call__`` returns its inputs unchanged. The same
    geometric transform is applied to the image (bilinear) and to every mask (nearest), keeping the
    size ``H, W``; areas moved in from outside the image are 0 (black image, background masks).
    Photometric changes touch only the image. Output is a deterministic function of the inputs
    and the ``rng`` state.

    Order: hflip, vflip, rot90, then one affine (scale + rotation about the image centre), then
    brightness, contrast, gamma.

    Args:
        hflip: probability of a left-right flip.
        vflip: probability of an up-down flip.
        rot90: probability of a rotation by k * 90 degrees, k uniform in {1, 2, 3}. Square images
            are rotated exactly (``np.rot90``); non-square ones through the affine (about the centre,
            corners cropped/padded) so that the size stays ``H, W``.
        scale: zoom factor range ``(lo, hi)``, sampled uniformly (> 1 zooms in).
        rotate_deg: rotation angle uniform in ``[-rotate_deg, rotate_deg]`` degrees.
        brightness: multiply the image by ``1 + u``, ``u`` uniform in ``[-brightness, brightness]``.
        contrast: scale deviations from the image mean by ``1 + u``, ``u`` in ``[-contrast, contrast]``.
        gamma: ``255 * (x / 255) ** g`` with ``g`` uniform in the range.
    """

    def __init__(
        self,
        *,
        hflip: float = 0.0,
        vflip: float = 0.0,
        rot90: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        rotate_deg: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip), ("rot90", rot90)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        for name, v in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if rotate_deg < 0:
            raise ValueError(f"rotate_deg must be >= 0, got {rotate_deg}")
        self.hflip, self.vflip, self.rot90 = float(hflip), float(vflip), float(rot90)
        self.scale = _check_range("scale", scale, 0.0)
        self.gamma = _check_range("gamma", gamma, 0.0)
        self.rotate_deg = float(rotate_deg)
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __repr__(self) -> str:
        keys = ("hflip", "vflip", "rot90", "scale", "rotate_deg", "brightness", "contrast", "gamma")
        return f"SegAugment({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    @property
    def is_identity(self) -> bool:
        return (
            self.hflip
            == self.vflip
            == self.rot90
            == self.rotate_deg
            == self.brightness
            == self.contrast
            == 0.0
            and self.scale == (1.0, 1.0)
            and self.gamma == (1.0, 1.0)
        )

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            masks: bool ``[N, H, W]`` (N may be 0), same pixel frame as the image.
            rng: the random source (e.g. ``np.random.default_rng(seed)``).

        Returns:
            ``(image uint8 [H, W, 3], masks bool [N, H, W])``.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or masks.dtype != np.bool_:
            raise ValueError(
                f"masks must be bool [N, {image.shape[0]}, {image.shape[1]}], got {masks.dtype} {masks.shape}"
            )
        if self.is_identity:
            return image, masks
        image, masks = self._geometric(image, masks, rng)
        image = self._photometric(image, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)

    def _geometric(
        self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if self.hflip and rng.random() < self.hflip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        if self.vflip and rng.random() < self.vflip:
            image, masks = image[::-1], masks[:, ::-1]
        angle = 0.0
        if self.rot90 and rng.random() < self.rot90:
            k = int(rng.integers(1, 4))
            if h == w:
                image, masks = np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
            else:
                angle += 90.0 * k
        zoom = float(rng.uniform(*self.scale)) if self.scale != (1.0, 1.0) else 1.0
        if self.rotate_deg:
            angle += float(rng.uniform(-self.rotate_deg, self.rotate_deg))
        if zoom == 1.0 and angle == 0.0:
            return image, masks
        # 2x3 matrix mapping source to output pixel centres; positive angle = counter-clockwise on screen.
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, zoom)
        image = cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        warped = np.empty((masks.shape[0], h, w), dtype=bool)
        for i, mask in enumerate(masks):
            warped[i] = cv2.warpAffine(
                np.ascontiguousarray(mask, dtype=np.uint8),
                matrix,
                (w, h),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
            ).astype(bool)
        return image, warped

    def _photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not (self.brightness or self.contrast or self.gamma != (1.0, 1.0)):
            return image
        out = image.astype(np.float32)
        if self.brightness:
            out *= 1.0 + float(rng.uniform(-self.brightness, self.brightness))
        if self.contrast:
            mean = float(out.mean())
            out = (out - mean) * (1.0 + float(rng.uniform(-self.contrast, self.contrast))) + mean
        if self.gamma != (1.0, 1.0):
            g = float(rng.uniform(*self.gamma))
            out = 255.0 * (np.clip(out, 0.0, 255.0) / 255.0) ** g
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
