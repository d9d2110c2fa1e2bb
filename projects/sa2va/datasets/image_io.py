"""The one image reader of the toolkit: file -> fully decoded 8-bit RGB, by one documented rule.

Used by the training dataset, the annotation check at start-up, the predictor, ``tools/predict.py``,
the demo server and the mask converter, so an image means the same pixels everywhere.

The rule (:func:`to_rgb`), applied after decoding the first frame of the file:

1. **Orientation**: the EXIF ``Orientation`` tag is applied (:func:`PIL.ImageOps.exif_transpose`), so
   the pixels are upright as a viewer shows them (and as masks drawn on the shown image expect).
2. **Depth**: 8-bit modes are kept. 16-bit integer images (``I;16*``, and ``I`` -- PIL's mode for
   16-bit PNG / TIFF greys) are scaled by the full 16-bit range, ``round(v * 255 / 65535)``; ``I``
   values outside 0..65535 are refused. 32-bit float images (``F``) are scaled min-max per image,
   ``round((v - min) * 255 / (max - min))`` (a constant image gives 0); NaN or inf is refused.
3. **Channels**: grey (``L``, ``1``, and the scaled 16-bit / float greys) is repeated into R, G and B;
   an alpha channel (``RGBA``, ``LA``, ``PA``) is dropped, the colour values are kept as stored (no
   blending onto a background); a palette (``P``) is expanded to its colours; ``CMYK``, ``YCbCr``,
   ``LAB``, ``HSV`` go through PIL's ``convert("RGB")`` (no ICC colour management).

A file that cannot be opened, is truncated or corrupt raises :class:`ImageReadError` (an ``OSError``)
naming the file; the whole image is decoded here, never lazily later.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "oriented_size",
    "read_image",
    "read_image_array",
    "read_image_size",
    "to_rgb",
]

#: File extensions PIL can open (lower case, with the dot), e.g. ``.jpg``, ``.png``, ``.tif``, ``.ppm``.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(
    sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
)

#: EXIF ``Orientation`` values that turn the image by 90 degrees (width and height swap).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_DIRECT_MODES = ("RGB", "L", "1", "RGBA", "RGBX", "LA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La")


class ImageReadError(OSError):
    """An image file cannot be read or decoded (the message names the file)."""


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """16-bit values (any integer dtype, 0..65535) -> uint8 by the full range: ``round(v * 255 / 65535)``."""
    return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _scale_float(values: np.ndarray, source: str) -> np.ndarray:
    """Float values -> uint8 min-max per image; refuses NaN / inf."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageReadError(f"image {source}: float pixels include NaN or inf")
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


def to_rgb(image: Image.Image, source: str = "<image>") -> Image.Image:
    """Apply the module's rule (orientation, depth, channels) to a decoded PIL image -> RGB.

    Args:
        image: any PIL image (its pixels loaded or loadable).
        source: the file (or upload) named in errors.

    Returns:
        a new ``RGB`` PIL image (8 bits per channel), upright.

    Raises:
        ImageReadError: values that the rule does not cover (NaN, ``I`` outside 0..65535, an
            unknown mode).
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _UINT16_MODES:
        return _grey_to_rgb(_scale_uint16(np.asarray(image)))
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"image {source}: 32-bit integer pixels in {values.min()}..{values.max()}; only 16-bit "
                "values (0..65535) are supported"
            )
        return _grey_to_rgb(_scale_uint16(values))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(image), source))
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    if mode in _DIRECT_MODES:
        return image.convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageReadError(f"image {source}: PIL mode {mode!r} cannot be converted to RGB: {e}") from e


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``image`` once its EXIF orientation is applied (header only, no decoding)."""
    w, h = image.size
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError):  # unreadable EXIF: exif_transpose ignores it too
        orientation = None
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image :func:`read_image` returns, from the header (cheap).

    Raises:
        ImageReadError: the file cannot be opened (message names it).
    """
    try:
        with Image.open(path) as im:
            return oriented_size(im)
    except FileNotFoundError:
        raise ImageReadError(f"image {path} not found") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def read_image(path: str | Path) -> Image.Image:
    """Read and fully decode an image file -> upright 8-bit ``RGB`` PIL image (see the module rule).

    Raises:
        ImageReadError: the file is missing, not an image, truncated or corrupt (message names it).
    """
    path = Path(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageReadError(
            f"cannot check image {path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process, so a "
            "truncated file would be padded silently; unset it"
        )
    try:
        with Image.open(path) as im:
            im.load()  # the whole first frame: a truncated or corrupt file fails here
            return to_rgb(im, str(path))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"image {path} not found") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def read_image_array(path: str | Path) -> np.ndarray:
    """:func:`read_image` as a ``[H, W, 3]`` uint8 array."""
    return np.asarray(read_image(path))
