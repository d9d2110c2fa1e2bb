"""Bring images and masks to a training size, into a new folder, with a round-trip report.

Images: read by the toolkit's one reader (:mod:`.image_io`: upright, 8-bit RGB), area
interpolation when shrinking (``cv2.INTER_AREA``), bilinear when enlarging; written as 8-bit RGB in
their own format (JPEG at a chosen quality) under the same file name. Masks: read as binary
(:func:`~.convert.read_binary_mask`), resized by area interpolation of their 0/1 values, then
``>= 0.5``; written 0/255 under the same file name (PNG as 1-bit), read back and checked.

The round trip of a mask: the resized mask enlarged back to the original size (bilinear of its
0/1 values, then ``>= 0.5``) against the original, as Dice; with the foreground fraction before
and after. A target size is ``N`` (the longer side becomes N, aspect ratio kept) or ``WxH``.

Instance-ID masks (pixel value = object id, :mod:`.instance_ids`) are resized per id: the area
fraction of every id and of the background at each new pixel, the largest wins (for one id, the
binary rule); written 8-bit or 16-bit as the ids need, read back and checked. Their round trip is the
mean over ids of the binary round trip of ``ids == id``; an id that the new size loses is an error.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .convert import IMAGE_EXTENSIONS, ConversionError, read_binary_mask
from .image_io import read_image_array
from .instance_ids import read_instance_ids, save_id_image

__all__ = [
    "FileReport",
    "PrepareError",
    "TargetSize",
    "mask_round_trip",
    "parse_size",
    "prepare_folders",
    "read_pixels",
    "resize_image_array",
    "resize_mask_array",
    "summarize",
    "target_shape",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_CSV = "prepare_report.csv"
REPORT_JSON = "prepare_report.json"
_JPEG = (".jpg", ".jpeg")


class PrepareError(ValueError):
    """Images cannot be prepared as asked (the message names the file or folder at fault)."""


@dataclass(frozen=True)
class TargetSize:
    """``longer`` (the longer side, aspect kept) or an exact ``width`` x ``height``."""

    longer: int | None = None
    width: int | None = None
    height: int | None = None

    def __str__(self) -> str:
        return f"{self.longer} (longer side)" if self.longer else f"{self.width}x{self.height}"


def parse_size(text: str) -> TargetSize:
    """``"512"`` -> longer side 512; ``"512x384"`` -> width 512, height 384.

    Raises:
        PrepareError: anything else, or a side < 1.
    """
    found = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if found is None:
        raise PrepareError(f"size {text!r}: give N (longer side) or WxH, e.g. 512 or 512x512")
    a, b = int(found.group(1)), found.group(2)
    if a < 1 or (b is not None and int(b) < 1):
        raise PrepareError(f"size {text!r}: sides must be >= 1")
    return TargetSize(longer=a) if b is None else TargetSize(width=a, height=int(b))


def target_shape(height: int, width: int, size: TargetSize) -> tuple[int, int]:
    """``(height, width)`` after resizing an image of ``height x width`` to ``size``.

    Longer-side mode: the longer side becomes ``size.longer``, the other ``round(side * scale)``
    (at least 1).
    """
    if size.longer is None:
        return int(size.height), int(size.width)
    scale = size.longer / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image_array(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 ``[H, W]`` / ``[H, W, C]`` to ``[height, width(, C)]``: area when shrinking,
    bilinear when enlarging (either side)."""
    h, w = image.shape[:2]
    enlarge = height > h or width > w
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)


def resize_mask_array(mask: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """Resize a bool ``[H, W]`` mask: area interpolation of the 0/1 values, then ``>= threshold``.

    Returns:
        bool ``[height, width]``.
    """
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return soft >= threshold


def mask_round_trip(original: np.ndarray, resized: np.ndarray) -> float:
    """Dice of ``resized`` enlarged back to ``original``'s size (bilinear of 0/1, ``>= 0.5``) vs
    ``original``; both bool ``[H, W]``. 1.0 when both are empty."""
    h, w = original.shape
    back = cv2.resize(resized.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    total = int(original.sum()) + int(back.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(original, back).sum()) / total


def read_pixels(path: str | Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB pixels of an image, upright (the toolkit's one reader,
    :func:`~.image_io.read_image_array`: EXIF orientation applied, 16-bit scaled to 8-bit).

    Raises:
        PrepareError: the file cannot be read.
    """
    try:
        return read_image_array(path)
    except OSError as err:
        raise PrepareError(str(err)) from err


@dataclass(frozen=True)
class FileReport:
    """One prepared file. ``fg_*`` and ``dice_round_trip`` only for masks (else ``None``)."""

    kind: str  # "image", "mask" or "id_mask"
    source: str
    output: str
    width_before: int
    height_before: int
    width_after: int
    height_after: int
    fg_before: float | None = None
    fg_after: float | None = None
    dice_round_trip: float | None = None


def _save_image(pixels: np.ndarray, path: Path, jpeg_quality: int) -> None:
    im = Image.fromarray(pixels)
    if path.suffix.lower() in _JPEG:
        im.save(path, quality=jpeg_quality)
    else:
        im.save(path)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """0/255 mask under ``path``'s format: PNG 1-bit, JPEG quality 100, others 8-bit grey."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        Image.fromarray(mask).convert("1").save(path, optimize=True)
    elif suffix in _JPEG:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path, quality=100)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _files(folder: Path, globs: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        raise PrepareError(f"folder not found: {folder}")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and (not globs or any(fnmatch.fnmatchcase(p.name, g) for g in globs))
    )
    if not files:
        shown = f" matching {', '.join(globs)}" if globs else ""
        raise PrepareError(f"no image files{shown} ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def _check_out(out_dir: Path, inputs: Sequence[Path]) -> None:
    out = out_dir.resolve()
    for folder in inputs:
        src = folder.resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise PrepareError(
                f"output folder {out_dir} overlaps the input folder {folder}: give a NEW folder "
                "(files are never resized in place)"
            )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PrepareError(f"output folder {out_dir} already exists and is not empty: give a new folder")


def resize_id_array(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an instance-ID ``[H, W]`` int array: per new pixel, the id (or background 0) with the
    largest area fraction (area interpolation of each id's 0/1 mask, as :func:`resize_mask_array`);
    ties go to the smaller value. Returns int64 ``[height, width]``."""
    best = np.full((height, width), -1.0, dtype=np.float32)
    out = np.zeros((height, width), dtype=np.int64)
    for value in np.unique(ids):
        share = cv2.resize((ids == value).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        better = share > best
        best[better] = share[better]
        out[better] = int(value)
    return out


def _prepare_id_mask(src: Path, dst: Path, size: TargetSize) -> FileReport:
    """Resize one instance-ID mask into ``dst`` (same name); every id must survive."""
    try:
        ids = read_instance_ids(src)
    except ConversionError as err:
        raise PrepareError(str(err)) from err
    h, w = ids.shape
    th, tw = target_shape(h, w, size)
    small = resize_id_array(ids, th, tw)
    lost = sorted(set(np.unique(ids).tolist()) - set(np.unique(small).tolist()))
    if lost:
        raise PrepareError(
            f"instance-ID mask {src}: id(s) {lost} vanish at {tw}x{th} (too small); choose a larger --size"
        )
    try:
        save_id_image(small, dst)
    except ValueError as err:
        raise PrepareError(str(err)) from err
    present = [v for v in np.unique(ids).tolist() if v != 0]
    dices = [mask_round_trip(ids == v, small == v) for v in present]
    return FileReport(
        "id_mask",
        str(src),
        str(dst),
        w,
        h,
        tw,
        th,
        fg_before=float((ids != 0).mean()),
        fg_after=float((small != 0).mean()),
        dice_round_trip=float(np.mean(dices)) if dices else 1.0,
    )


def prepare_folders(
    images_dir: str | Path,
    out_dir: str | Path,
    size: TargetSize,
    *,
    masks_dirs: Sequence[str | Path] = (),
    mask_globs: Sequence[str] = (),
    mask_threshold: int = 127,
    jpeg_quality: int = 95,
    id_masks_dirs: Sequence[str | Path] = (),
) -> list[FileReport]:
    """Resize every image of ``images_dir`` and every mask of ``masks_dirs`` into ``out_dir``.

    Each input folder becomes ``out_dir/<its name>`` (file names kept). A mask's target size is
    computed from its own size, so a mask of its image's size gets the image's new size.

    Args:
        images_dir: folder of images (files with an extension of ``IMAGE_EXTENSIONS``).
        out_dir: a new (or empty) folder outside every input folder.
        size: see :func:`parse_size`.
        masks_dirs: folders of binary masks (object masks, field-of-view masks).
        mask_globs: only mask files matching one of these (``fnmatch``) are taken; default all.
        mask_threshold: a mask pixel is foreground when its grey value (0..255) is above it.
        jpeg_quality: quality of JPEG images written.
        id_masks_dirs: folders of instance-ID masks (module docstring), all their image files.

    Returns:
        One :class:`FileReport` per file, images first.

    Raises:
        PrepareError: bad folders (overlapping, not empty, no files, two inputs of one name),
            unreadable files, or a mask whose written file reads back differently.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    masks = [Path(m) for m in masks_dirs]
    id_masks = [Path(m) for m in id_masks_dirs]
    inputs = [images_dir, *masks, *id_masks]
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        raise PrepareError(
            f"input folders {', '.join(map(str, inputs))} share a name; each becomes out/<name>"
        )
    _check_out(out_dir, inputs)
    jobs = [("image", p) for p in _files(images_dir, ())]
    for folder in masks:
        jobs += [("mask", p) for p in _files(folder, mask_globs)]
    for folder in id_masks:
        jobs += [("id_mask", p) for p in _files(folder, ())]
    reports = []
    for kind, src in jobs:
        dst = out_dir / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            pixels = read_pixels(src)
            h, w = pixels.shape[:2]
            th, tw = target_shape(h, w, size)
            _save_image(resize_image_array(pixels, th, tw), dst, jpeg_quality)
            reports.append(FileReport(kind, str(src), str(dst), w, h, tw, th))
            continue
        if kind == "id_mask":
            reports.append(_prepare_id_mask(src, dst, size))
            continue
        try:
            mask = read_binary_mask(src, mask_threshold)
        except ConversionError as err:
            raise PrepareError(str(err)) from err
        h, w = mask.shape
        th, tw = target_shape(h, w, size)
        small = resize_mask_array(mask, th, tw)
        _save_mask(small, dst)
        written = read_binary_mask(dst)
        if not np.array_equal(written, small):
            raise PrepareError(
                f"mask {dst}: the written file reads back with {int((written != small).sum())} pixels "
                "changed (a lossy format?); convert the masks to PNG first"
            )
        reports.append(
            FileReport(
                kind,
                str(src),
                str(dst),
                w,
                h,
                tw,
                th,
                fg_before=float(mask.mean()),
                fg_after=float(small.mean()),
                dice_round_trip=mask_round_trip(mask, small),
            )
        )
    logger.info("prepared %d files into %s", len(reports), out_dir)
    return reports


def write_report(reports: Sequence[FileReport], out_dir: str | Path, size: TargetSize) -> tuple[Path, Path]:
    """Write ``prepare_report.csv`` (one row per file) and ``prepare_report.json`` (summary + rows)."""
    out = Path(out_dir)
    csv_path, json_path = out / REPORT_CSV, out / REPORT_JSON
    columns = list(FileReport.__dataclass_fields__)
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in reports:
            writer.writerow(
                ["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in asdict(r).values()]
            )
    json_path.write_text(
        json.dumps({"size": str(size), **summarize(reports), "files": [asdict(r) for r in reports]}, indent=2)
        + "\n"
    )
    return csv_path, json_path


def summarize(reports: Sequence[FileReport]) -> dict:
    """Counts, and over masks: mean/min round-trip Dice (with the worst file), mean foreground."""
    masks = [r for r in reports if r.kind in ("mask", "id_mask")]
    out: dict = {"images": sum(r.kind == "image" for r in reports), "masks": len(masks)}
    if masks:
        worst = min(masks, key=lambda r: r.dice_round_trip)
        out.update(
            dice_round_trip_mean=float(np.mean([r.dice_round_trip for r in masks])),
            dice_round_trip_min=worst.dice_round_trip,
            worst_mask=worst.source,
            fg_before_mean=float(np.mean([r.fg_before for r in masks])),
            fg_after_mean=float(np.mean([r.fg_after for r in masks])),
        )
    return out
