"""Image preprocessing for the two Sa2VA branches: InternVL dynamic tiles and the SAM2 1024 input.

InternVL branch: ``dynamic_tiles`` (PIL bicubic resizes) -> ``internvl_pixel_values``
``[T, 3, 448, 448]`` float32, ImageNet-normalised. The prompt gets ``image_token_string(T, 256)``.

SAM2 branch: ``sam2_pixel_values`` -> ``[3, 1024, 1024]`` float32, the image resized without keeping
its aspect ratio.

Both can stop before the normalisation (``normalize=False``): the result is then the uint8 pixels,
4x fewer bytes through the DataLoader workers, shared memory, pinned memory and the host-to-device
copy; :func:`model_pixels` normalises them on the device, with the same fp32 operations (bit-identical).

Training uses the exact ImageNet constants in fp32; the official HF inference
normalises in bf16, i.e. effectively with ``SAM2_INFER_MEAN`` / ``SAM2_INFER_STD`` (the bf16
roundings of the ImageNet constants). Pass those for outputs that match the official predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..pixels import IMAGENET_MEAN, IMAGENET_STD, model_pixels, normalize_pixels, standardize
from ..special_tokens import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_CONTEXT_TOKEN",
    "IMG_END_TOKEN",
    "IMG_START_TOKEN",
    "SAM2_INFER_MEAN",
    "SAM2_INFER_STD",
    "InternVLImageProcessor",
    "VisionInputs",
    "dynamic_tiles",
    "find_closest_grid",
    "image_token_string",
    "internvl_pixel_values",
    "model_pixels",
    "normalize_pixels",
    "sam2_pixel_values",
    "tile_grids",
]

# bf16 roundings of the ImageNet constants (the official HF predictor normalises in bf16).
SAM2_INFER_MEAN: tuple[float, float, float] = (0.484375, 0.455078125, 0.40625)
SAM2_INFER_STD: tuple[float, float, float] = (0.228515625, 0.2236328125, 0.224609375)


def tile_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Candidate grids ``(cols, rows)`` with ``min_num <= cols*rows <= max_num``, sorted by tile count.

    Grids with the same tile count keep the iteration order of a Python set built in the order
    n = min_num..max_num, cols = 1..n, rows = 1..n, which is what InternVL uses; that order decides
    exact aspect-ratio ties between equal-count grids, so it is reproduced on purpose.
    """
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def find_closest_grid(
    *, width: int, height: int, grids: Sequence[tuple[int, int]], tile_size: int
) -> tuple[int, int]:
    """The grid ``(cols, rows)`` whose aspect ``cols/rows`` is closest to ``width/height``.

    On an exact tie a later grid (more tiles) replaces the current best only when the image area
    exceeds half the grid's pixel area, ``0.5 * tile_size^2 * cols * rows``.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(
    image: Image.Image,
    *,
    min_num: int = 1,
    max_num: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """InternVL dynamic tiling: ``tile_size`` x ``tile_size`` RGB tiles, row-major, then a thumbnail.

    The image (converted to RGB) is resized with PIL bicubic to ``(tile_size*cols, tile_size*rows)``
    for the grid from ``find_closest_grid``, cut into ``cols*rows`` tiles left-to-right,
    top-to-bottom, and, when there is more than one tile and ``use_thumbnail``, the whole image
    resized to ``tile_size`` x ``tile_size`` is appended. E.g. 512x512 -> 1 tile; 999x960 -> 3x3 + 1.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    cols, rows = find_closest_grid(
        width=width, height=height, grids=tile_grids(min_num, max_num), tile_size=tile_size
    )
    resized = image.resize((tile_size * cols, tile_size * rows), resample=Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), resample=Image.Resampling.BICUBIC))
    return tiles


def internvl_pixel_values(
    tiles: Sequence[Image.Image],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
) -> torch.Tensor:
    """Stack RGB tiles into ``[T, 3, S, S]`` float32: ``uint8 / 255``, then ``(x - mean) / std``.

    ``normalize=False``: the uint8 ``[T, 3, S, S]`` pixels (normalise later with :func:`model_pixels`).
    """
    if not tiles:
        raise ValueError("internvl_pixel_values got an empty list of tiles")
    arrays = []
    for k, tile in enumerate(tiles):
        arr = np.asarray(tile.convert("RGB") if tile.mode != "RGB" else tile, dtype=np.uint8)
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(f"tile {k} has size {tile.size}, tile 0 has size {tiles[0].size}")
        arrays.append(arr)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if not normalize:
        return pixels.contiguous()
    return normalize_pixels(pixels, mean, std)


def sam2_pixel_values(
    image: np.ndarray | Image.Image,
    *,
    size: int = 1024,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resample: Literal["bilinear", "pil_bicubic"] = "bilinear",
    normalize: bool = True,
) -> torch.Tensor:
    """SAM2 input ``[3, size, size]`` float32 from an RGB ``[H, W, 3]`` uint8 array or PIL image.

    The image is resized to ``size`` x ``size`` without keeping its aspect ratio, then ``/ 255`` and
    ``(x - mean) / std``. ``resample="bilinear"``: ``F.interpolate`` on the uint8 values cast to
    float32 (``align_corners=False, antialias=False``; no rounding back to uint8).
    ``resample="pil_bicubic"``: PIL bicubic resize of the uint8 image (result stays uint8).
    ``normalize=False`` (only with ``"pil_bicubic"``, whose result is still integer): the uint8
    ``[3, size, size]`` pixels (normalise later with :func:`model_pixels`).
    """
    if not normalize and resample != "pil_bicubic":
        raise ValueError(
            f"sam2_pixel_values(normalize=False) needs resample='pil_bicubic' (a {resample!r} resize gives "
            "non-integer values that uint8 cannot hold)"
        )
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    else:
        arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got shape {arr.shape} dtype {arr.dtype}")
    if resample == "pil_bicubic":
        if arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), resample=Image.Resampling.BICUBIC))
        pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        if not normalize:
            return pixels.contiguous()
        x = pixels.float()
    elif resample == "bilinear":
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
        if x.shape[1:] != (size, size):
            x = F.interpolate(
                x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False
            )[0]
    else:
        raise ValueError(f"resample={resample!r} is not 'bilinear' or 'pil_bicubic'")
    return standardize(x / 255.0, mean, std)


def image_token_string(num_tiles: int, num_image_token: int) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` * (num_image_token * num_tiles) + ``</img>`` (replaces ``<image>``)."""
    if num_tiles < 1 or num_image_token < 1:
        raise ValueError(f"need num_tiles >= 1 and num_image_token >= 1, got {num_tiles}, {num_image_token}")
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * num_tiles) + IMG_END_TOKEN


@dataclass
class VisionInputs:
    """The MLLM input of one image and the number of image-slot tokens it takes in the prompt.

    Attributes:
        pixel_values: InternVL tiles ``[T, 3, S, S]`` (uint8, or float32 ImageNet-normalised), or Qwen-VL
            patches ``[P, 3*t*p*p]`` float32 (normalised by the Hugging Face processor).
        image_grid_thw: Qwen-VL ``[1, 3]`` long patch grid; ``None`` for InternVL.
        slots: image-slot tokens (``<IMG_CONTEXT>`` / ``<|image_pad|>``) of the image in the prompt.
    """

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor | None
    slots: int


class InternVLImageProcessor:
    """InternVL dynamic tiling: image -> ``[T, 3, S, S]`` tiles and its ``<IMG_CONTEXT>`` count.

    Args:
        tile_size: InternViT input side ``S`` (448 in every released model).
        min_tiles / max_tiles / use_thumbnail: :func:`dynamic_tiles` (official: 1 / 12 / True).
        num_image_token: LLM tokens per tile; ``None``: ``(tile_size / patch_size * downsample_ratio)^2``
            (256 for 448 px tiles of 14 px patches and the 0.5 pixel shuffle).
        patch_size / downsample_ratio: InternViT patch side and the pixel-shuffle ratio (for the default).

    Attributes:
        image_tokens: ``(start, slot, end)`` token strings that stand for an image in the text.
        internvl_tokens: whether the tokenizer needs the InternVL tokens added (``add_sa2va_tokens``).
    """

    image_tokens: ClassVar[tuple[str, str, str]] = (IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN)
    internvl_tokens: ClassVar[bool] = True

    def __init__(
        self,
        *,
        tile_size: int = 448,
        min_tiles: int = 1,
        max_tiles: int = 12,
        use_thumbnail: bool = True,
        num_image_token: int | None = None,
        patch_size: int = 14,
        downsample_ratio: float = 0.5,
    ) -> None:
        tile_grids(min_tiles, max_tiles)  # validates the range
        if tile_size < 1 or patch_size < 1 or tile_size % patch_size:
            raise ValueError(
                f"tile_size ({tile_size}) must be a positive multiple of patch_size ({patch_size})"
            )
        self.tile_size = int(tile_size)
        self.min_tiles = int(min_tiles)
        self.max_tiles = int(max_tiles)
        self.use_thumbnail = bool(use_thumbnail)
        if num_image_token is None:
            num_image_token = int((tile_size // patch_size * downsample_ratio) ** 2)
        if num_image_token < 1:
            raise ValueError(f"num_image_token must be >= 1, got {num_image_token}")
        self.num_image_token = int(num_image_token)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tile_size={self.tile_size}, min_tiles={self.min_tiles}, "
            f"max_tiles={self.max_tiles}, use_thumbnail={self.use_thumbnail}, "
            f"num_image_token={self.num_image_token})"
        )

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """The image's RGB tiles (:func:`dynamic_tiles`)."""
        return dynamic_tiles(
            image,
            min_num=self.min_tiles,
            max_num=self.max_tiles,
            tile_size=self.tile_size,
            use_thumbnail=self.use_thumbnail,
        )

    def preprocess(self, image: Image.Image, *, normalize: bool = True) -> VisionInputs:
        """Tiles ``[T, 3, S, S]`` (float32 normalised, or uint8 with ``normalize=False``) and their slots."""
        tiles = self.tiles(image)
        return VisionInputs(
            pixel_values=internvl_pixel_values(tiles, normalize=normalize),
            image_grid_thw=None,
            slots=len(tiles) * self.num_image_token,
        )

    def num_tiles(self, width: int, height: int) -> int:
        """Tiles of a ``width x height`` image (no decoding), thumbnail included."""
        cols, rows = find_closest_grid(
            width=width,
            height=height,
            grids=tile_grids(self.min_tiles, self.max_tiles),
            tile_size=self.tile_size,
        )
        n = cols * rows
        return n + 1 if self.use_thumbnail and n > 1 else n

    def num_slots(self, width: int, height: int) -> int:
        """``<IMG_CONTEXT>`` tokens of a ``width x height`` image (no decoding)."""
        return self.num_tiles(width, height) * self.num_image_token
