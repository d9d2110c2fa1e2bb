"""Convert users' masks (a folder of binary mask images, a CSV of pairs, or COCO instances JSON) into
annotation records.

Nothing is dropped silently: every component and hole of a mask is kept (RLE is exact), an image
without its mask file (or a mask without its image) is an error unless explicitly allowed (then it
is listed with the reason), and every object comes with a round-trip measurement (decoded
annotation vs. source mask). Masks that look like something else than an object (covering most of
the image, or matching the image's field of view) are listed as suspicious.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from .annotations import decode_object_mask, encode_mask_rle, mask_to_polygons
from .fov import AUTO_FOV_THRESHOLD, auto_fov, mask_iou
from .image_io import read_image_array, read_image_size
from .pairing import NamePattern, PartnerIndex, PatternError, describe_fields, image_fields

__all__ = [
    "IMAGE_EXTENSIONS",
    "ConversionError",
    "ConversionResult",
    "MaskSpec",
    "MissingMaskError",
    "RoundTrip",
    "Suspicion",
    "SuspicionCheck",
    "check_suspicious",
    "compare_masks",
    "convert_coco",
    "convert_mask_folder",
    "convert_pairs_csv",
    "count_components",
    "count_holes",
    "format_report",
    "list_images",
    "mask_to_parts",
    "read_binary_mask",
    "read_pairs_csv",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
MaskFormat = Literal["rle", "polygon"]


class ConversionError(ValueError):
    """The source data cannot be converted as asked (the message names the files at fault)."""


class MissingMaskError(ConversionError, FileNotFoundError):
    """Unpaired files: an image without its mask, or a mask without its image."""


@dataclass(frozen=True)
class MaskSpec:
    """One object per image: its mask file name pattern and its text.

    The pattern has named fields (see :mod:`.pairing`): ``{stem}`` (the image file name without
    extension) or any field of the image pattern, e.g. ``"{id}_vessels.gif"``.
    """

    pattern: str
    text: str

    def __post_init__(self) -> None:
        pattern = NamePattern(self.pattern)  # raises PatternError (a ValueError) on a bad pattern
        if not pattern.fields:
            raise PatternError(
                f"mask pattern {self.pattern!r} has no field: name the part shared with the image, "
                "e.g. '{stem}_mask.png' or '{id}_vessels.gif'"
            )
        if not self.text.strip():
            raise ValueError(f"empty text for mask pattern {self.pattern!r}")
        object.__setattr__(self, "name_pattern", pattern)

    name_pattern: NamePattern = field(init=False, repr=False, compare=False)

    def mask_name(self, stem: str) -> str:
        """The mask file name for an image stem (patterns whose only field is ``{stem}``)."""
        return self.name_pattern.fill({"stem": stem})


@dataclass(frozen=True)
class SuspicionCheck:
    """When a mask is suspicious: foreground fraction above ``max_foreground``, or IoU with the
    image's automatic field of view (:func:`~.fov.auto_fov` at ``fov_threshold``) of at least
    ``fov_iou`` (``None``: no field-of-view test, and the image pixels are not read)."""

    max_foreground: float = 0.5
    fov_iou: float | None = 0.8
    fov_threshold: float = AUTO_FOV_THRESHOLD


@dataclass(frozen=True)
class Suspicion:
    """A mask that does not look like an object, and why."""

    image: str
    mask: str
    text: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RoundTrip:
    """Decoded annotation vs. source mask for one object. Components: 8-connectivity; holes:
    4-connected background regions not touching the image border."""

    image: str
    text: str
    source: str
    source_pixels: int
    decoded_pixels: int
    pixels_differ: int
    dice: float
    components_source: int
    components_decoded: int
    holes_source: int
    holes_decoded: int

    @property
    def exact(self) -> bool:
        return self.pixels_differ == 0


@dataclass
class ConversionResult:
    """Records plus everything the report needs (nothing left out silently)."""

    records: list[dict] = field(default_factory=list)
    round_trips: list[RoundTrip] = field(default_factory=list)
    # (image path, expected mask path or "", reason): images without a mask
    missing: list[tuple[str, str, str]] = field(default_factory=list)
    orphans: list[tuple[str, str]] = field(default_factory=list)  # (mask path, reason): no image
    several: list[tuple[str, list[str], str]] = field(default_factory=list)  # (image, masks, pattern)
    empty: list[str] = field(default_factory=list)  # mask files with no foreground (skipped)
    unused: list[str] = field(default_factory=list)  # files in the mask folder that fit no pattern
    unmatched_images: list[str] = field(default_factory=list)  # image files not fitting the pattern
    without_objects: list[str] = field(default_factory=list)  # images that got no record
    suspicious: list[Suspicion] = field(default_factory=list)
    # instance-ID masks: (mask path, id, pixels) of ids without a text, skipped on request
    unmapped_ids: list[tuple[str, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # other facts the report must show

    @property
    def exact(self) -> bool:
        return all(rt.exact for rt in self.round_trips)


# ------------------------------------------------------------------------------------------ arrays


def read_binary_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """Read a mask image and binarise it: ``gray > threshold``.

    Any PIL mode is accepted: 1-bit is used as is; colour / palette images are converted to 8-bit
    gray (ITU-R 601 luma); 16-bit images are scaled to 0..255 first. ``threshold`` is on that
    0..255 scale.

    Returns:
        bool ``[H, W]``.

    Raises:
        ConversionError: the file is unreadable, or it has non-zero values that are all
            ``<= threshold`` (e.g. a 0/1 label mask with the default 127), which would silently
            give an empty mask.
    """
    try:
        with Image.open(path) as im:
            if im.mode == "1":
                return np.array(im, dtype=bool)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                gray = np.array(im, dtype=np.float64)
                if gray.max() > 255:
                    gray = gray / 257.0
            else:
                gray = np.array(im.convert("L"), dtype=np.float64)
    except OSError as err:
        raise ConversionError(f"cannot read mask {path}: {err}") from err
    peak = gray.max()
    if 0 < peak <= threshold:
        raise ConversionError(
            f"mask {path}: its largest value is {peak:g} <= threshold {threshold}, so it would "
            "binarise to an empty mask; lower --threshold (e.g. 0 for 0/1 label masks)"
        )
    return gray > threshold


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected foreground components of a bool ``[H, W]`` mask."""
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(n) - 1


def count_holes(mask: np.ndarray) -> int:
    """Number of holes: 4-connected background regions of a bool ``[H, W]`` mask not touching its border."""
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    n, _ = cv2.connectedComponents(background, connectivity=4)
    return int(n) - 2  # minus label 0 (the foreground) and the outer background


def compare_masks(
    source: np.ndarray, decoded: np.ndarray, *, image: str, text: str, source_name: str
) -> RoundTrip:
    """Measure a round trip; both masks bool ``[H, W]`` of the same shape."""
    if source.shape != decoded.shape:
        raise ValueError(f"shape mismatch: source {source.shape} vs decoded {decoded.shape}")
    src, dec = int(source.sum()), int(decoded.sum())
    inter = int(np.logical_and(source, decoded).sum())
    dice = 1.0 if src + dec == 0 else 2.0 * inter / (src + dec)
    return RoundTrip(
        image=image,
        text=text,
        source=source_name,
        source_pixels=src,
        decoded_pixels=dec,
        pixels_differ=int(np.count_nonzero(source != decoded)),
        dice=dice,
        components_source=count_components(source),
        components_decoded=count_components(decoded),
        holes_source=count_holes(source),
        holes_decoded=count_holes(decoded),
    )


def mask_to_parts(
    mask: np.ndarray, fmt: MaskFormat = "rle", tolerance: float = 0.0
) -> list[list[float] | dict]:
    """One object's parts for a bool ``[H, W]`` mask: ``[rle]`` (exact) or polygons (lossy, see
    :func:`~projects.sa2va.datasets.annotations.mask_to_polygons`)."""
    if fmt == "rle":
        return [encode_mask_rle(mask)]
    if fmt == "polygon":
        return mask_to_polygons(mask, tolerance)
    raise ValueError(f"unknown mask format {fmt!r}; expected 'rle' or 'polygon'")


# ----------------------------------------------------------------------------------- mask folders


def list_images(images_dir: str | Path, exclude_names: Sequence[str] = ()) -> list[Path]:
    """Image files directly in ``images_dir`` (sorted by name), minus ``exclude_names``."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ConversionError(f"image folder not found: {folder}")
    excluded = set(exclude_names)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in excluded
    )


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the image as the toolkit reads it (EXIF orientation applied)."""
    try:
        w, h = read_image_size(path)
    except OSError as err:
        raise ConversionError(str(err)) from err
    return h, w


def _read_image(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` pixels of an image (the shared reader's, for the suspicious-mask check)."""
    try:
        return read_image_array(path)
    except OSError as err:
        raise ConversionError(f"cannot read image {path}: {err}") from err


def check_suspicious(mask: np.ndarray, image: np.ndarray | None, check: SuspicionCheck) -> list[str]:
    """Reasons why ``mask`` looks like something other than the object (empty list: none).

    Args:
        mask: bool ``[H, W]``.
        image: uint8 ``[H, W]`` / ``[H, W, C]`` of the same size, or ``None`` (no FOV test).
        check: the limits.
    """
    reasons = []
    fraction = float(mask.mean()) if mask.size else 0.0
    if fraction > check.max_foreground:
        reasons.append(
            f"covers {100 * fraction:.1f} % of the image (more than {100 * check.max_foreground:g} %)"
        )
    if image is not None and check.fov_iou is not None:
        fov = auto_fov(image, check.fov_threshold)
        overlap = mask_iou(mask, fov)
        if overlap >= check.fov_iou:
            reasons.append(
                f"matches the image's field of view (IoU {overlap:.3f} with grey > {check.fov_threshold:g}, "
                "holes filled): is this a field-of-view mask?"
            )
    return reasons


@dataclass
class _Planned:
    """One record to build: the image, its name in the record, its (mask path, text) objects."""

    image: Path
    name: str
    objects: list[tuple[Path, str]] = field(default_factory=list)


def _build_records(
    plan: Sequence[_Planned],
    result: ConversionResult,
    *,
    fmt: MaskFormat,
    tolerance: float,
    threshold: int,
    skip_empty: bool,
    suspicion: SuspicionCheck | None,
) -> None:
    """Read, check, encode and round-trip every planned object into ``result``."""
    for item in plan:
        path = item.image
        height, width = _image_size(path)
        pixels: np.ndarray | None = None
        texts: list[str] = []
        objects: list[list] = []
        for mask_path, text in item.objects:
            mask = read_binary_mask(mask_path, threshold)
            if mask.shape != (height, width):
                raise ConversionError(
                    f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {path} is "
                    f"{width}x{height} (w x h)"
                )
            if not mask.any():
                if not skip_empty:
                    raise ConversionError(
                        f"mask {mask_path} (image {path}) is empty after thresholding at {threshold}; "
                        "pass --skip-empty to list such masks instead"
                    )
                result.empty.append(str(mask_path))
                continue
            if suspicion is not None:
                if pixels is None and suspicion.fov_iou is not None:
                    pixels = _read_image(path)
                    if pixels.shape[:2] != (height, width):
                        raise ConversionError(f"image {path}: pixels {pixels.shape} differ from its size")
                reasons = check_suspicious(mask, pixels, suspicion)
                if reasons:
                    result.suspicious.append(Suspicion(str(path), str(mask_path), text, tuple(reasons)))
            parts = mask_to_parts(mask, fmt, tolerance)
            decoded = decode_object_mask(parts, height, width)
            result.round_trips.append(
                compare_masks(mask, decoded, image=item.name, text=text, source_name=str(mask_path))
            )
            texts.append(text)
            objects.append(parts)
        if objects:
            result.records.append({"id": path.stem, "image": item.name, "text": texts, "mask": objects})
        else:
            result.without_objects.append(str(path))


def _raise_unpaired(result: ConversionResult, allow_missing: bool) -> None:
    """Refuse ambiguous pairings always, and missing partners unless ``allow_missing``."""
    if result.several:
        lines = [
            f"image {image} has {len(masks)} masks under pattern {pattern!r}: {', '.join(masks)}"
            for image, masks, pattern in result.several
        ]
        raise ConversionError(
            "ambiguous pairing (give a pattern that picks one mask per image):\n  " + _clip(lines)
        )
    if allow_missing:
        return
    lines = [
        f"image {image} has no mask file {mask} ({why})" if mask else f"image {image} has no mask ({why})"
        for image, mask, why in result.missing
    ]
    lines += [f"mask {mask} has no image: {why}" for mask, why in result.orphans]
    if lines:
        raise MissingMaskError(
            f"{len(lines)} unpaired file(s); fix the names/patterns or pass --allow-missing to list such "
            "files instead:\n  " + _clip(lines)
        )


def _clip(lines: Sequence[str], limit: int = 20) -> str:
    shown = list(lines[:limit]) + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
    return "\n  ".join(shown)


def convert_mask_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    specs: Sequence[MaskSpec],
    *,
    image_pattern: str | None = None,
    fmt: MaskFormat = "rle",
    tolerance: float = 0.0,
    threshold: int = 127,
    allow_missing: bool = False,
    skip_empty: bool = False,
    suspicion: SuspicionCheck | None = SuspicionCheck(),
) -> ConversionResult:
    """Build one record per image from mask files found through name patterns.

    Images are the files of ``images_dir`` that fit ``image_pattern`` (any name with an extension
    of :data:`IMAGE_EXTENSIONS` when ``None``). For each image and each spec, the mask is the file
    of ``masks_dir`` whose fields shared with the image (``{stem}`` and the image pattern's fields,
    see :mod:`.pairing`) have the image's values; it becomes one object (text ``spec.text``).
    Image paths in the records are relative to ``images_dir``. The two folders may be the same
    (mask files are then not taken as images).

    Unpaired files are listed with their reason: an image without a mask (``missing``), a mask
    that fits a pattern but whose image does not exist (``orphans``), an image with several
    masks under one pattern (``several``; always an error).

    Args:
        specs: one per object, in the order of the record's ``text``/``mask`` lists.
        image_pattern: e.g. ``"{id}_img.tif"`` (see :mod:`.pairing`).
        fmt: ``"rle"`` (exact) or ``"polygon"`` (lossy: holes filled, thin parts approximated).
        tolerance: polygon simplification in pixels (polygon format only).
        threshold: mask binarisation, ``gray > threshold`` on a 0..255 scale.
        allow_missing: unpaired images and masks are listed in the result instead of raising.
        skip_empty: an all-background mask is listed in ``result.empty`` instead of raising.
        suspicion: limits for ``result.suspicious`` (masks covering most of the image or
            matching its field of view); ``None`` skips the check.

    Raises:
        MissingMaskError: unpaired files (names each image/mask and the expected partner).
        ConversionError: unreadable files, size mismatch, empty mask, ambiguous pairing.
    """
    plan, result, taken = _pair_mask_folder(images_dir, masks_dir, specs, image_pattern, allow_missing)
    _build_records(
        plan,
        result,
        fmt=fmt,
        tolerance=tolerance,
        threshold=threshold,
        skip_empty=skip_empty,
        suspicion=suspicion,
    )
    _list_unused(result, Path(masks_dir), taken)
    logger.info(
        "converted %d images into %d records (%d objects)",
        len(plan),
        len(result.records),
        len(result.round_trips),
    )
    return result


def _pair_mask_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    specs: Sequence[MaskSpec],
    image_pattern: str | None,
    allow_missing: bool,
) -> tuple[list[_Planned], ConversionResult, set[str]]:
    """Pair the images of ``images_dir`` with their mask files (see :func:`convert_mask_folder`).

    Returns:
        ``(plan, result, taken)``: one planned record per image (its objects: ``(mask path, spec
        text)``), the result holding the unpaired files so far, and the file names of the mask folder
        that are images, masks in use or listed orphans (the rest is :func:`_list_unused`).
    """
    if not specs:
        raise ValueError("at least one MaskSpec is needed")
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir():
        raise ConversionError(f"image folder not found: {images_dir}")
    if not masks_dir.is_dir():
        raise ConversionError(f"mask folder not found: {masks_dir}")
    try:
        image_pat = None if image_pattern is None else NamePattern(image_pattern)
        mask_names = [p.name for p in masks_dir.iterdir() if p.is_file()]
        indexes = [PartnerIndex(mask_names, spec.name_pattern, image_pat) for spec in specs]
    except PatternError as err:
        raise ConversionError(str(err)) from err

    result = ConversionResult()
    candidates: list[tuple[Path, dict[str, str]]] = []
    for path in sorted(p for p in images_dir.iterdir() if p.is_file()):
        if image_pat is None and path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        fields_ = image_fields(path.name, image_pat)
        if fields_ is None:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                result.unmatched_images.append(str(path))
            continue
        candidates.append((path, fields_))
    exclude: set[str] = set()
    if images_dir.resolve() == masks_dir.resolve():
        exclude = {name for _, f in candidates for index in indexes for name in index.find(f)}
        result.unmatched_images = [p for p in result.unmatched_images if Path(p).name not in exclude]
    images = [(p, f) for p, f in candidates if p.name not in exclude]
    if not images:
        what = f"fitting {image_pattern!r}" if image_pattern else f"({', '.join(IMAGE_EXTENSIONS)})"
        raise ConversionError(f"no images {what} in {images_dir}")

    plan: list[_Planned] = []
    used: set[str] = set()
    image_keys: list[set[tuple[str, ...]]] = [set() for _ in specs]
    for k, (spec, index) in enumerate(zip(specs, indexes)):
        owner: dict[tuple[str, ...], Path] = {}
        for path, fields_ in images:
            key = index.key(fields_)
            if key in owner:
                raise ConversionError(
                    f"images {owner[key]} and {path} share {describe_fields(fields_, index.key_fields)}, "
                    f"so mask pattern {spec.pattern!r} gives both the same mask: ambiguous masks"
                )
            owner[key] = path
            image_keys[k].add(key)
    for path, fields_ in images:
        item = _Planned(path, path.name)
        for spec, index in zip(specs, indexes):
            found = index.find(fields_)
            if not found:
                expected = str(masks_dir / index.expected(fields_))
                why = f"pattern {spec.pattern!r}, {describe_fields(fields_, index.key_fields)}"
                result.missing.append((str(path), expected, why))
            elif len(found) > 1:
                result.several.append((str(path), [str(masks_dir / n) for n in found], spec.pattern))
            else:
                used.add(found[0])
                item.objects.append((masks_dir / found[0], spec.text))
        plan.append(item)
    image_names = {p.name for p, _ in images}
    for k, (spec, index) in enumerate(zip(specs, indexes)):
        for name in index.matching:
            if name in used or name in image_names or name in exclude:
                continue
            values = spec.name_pattern.match(name) or {}
            key = tuple(values[f] for f in index.key_fields)
            if key in image_keys[k] or any(name in o for o, _ in result.orphans):
                continue
            shared = describe_fields(values, index.key_fields)
            if image_pat is not None and image_pat.is_exact and set(image_pat.fields) <= set(values):
                expected = images_dir / image_pat.fill(values)
                why = f"fits {spec.pattern!r} ({shared}) but there is no image {expected}"
            else:
                why = f"fits {spec.pattern!r} ({shared}) but no image in {images_dir} has {shared}"
            result.orphans.append((str(masks_dir / name), why))
    _raise_unpaired(result, allow_missing)
    orphan_names = {Path(o).name for o, _ in result.orphans}
    return plan, result, image_names | used | exclude | orphan_names


def _list_unused(result: ConversionResult, masks_dir: Path, taken: set[str]) -> None:
    """Image-type files of the mask folder that no pattern took go to ``result.unused``."""
    result.unused = sorted(
        str(p)
        for p in masks_dir.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in taken
    )


# ------------------------------------------------------------------------------------ pairs CSV


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else folder / path


def read_pairs_csv(
    csv_file: str | Path,
    images_dir: str | Path,
    *,
    masks_dir: str | Path | None = None,
    text: str | None = None,
) -> list[tuple[int, str, Path, str]]:
    """Rows of a pairs CSV: ``(line, image name relative to images_dir, mask path, text)``.

    The CSV has a header with the columns ``image`` and ``mask`` and optionally ``text`` (other
    columns are ignored). ``image``: a path relative to ``images_dir`` (or absolute, inside it);
    ``mask``: relative to ``masks_dir`` (default: the CSV's folder) or absolute; ``text``: the
    object's text, else ``text``. Several rows for one image are several objects, in row order.

    Raises:
        ConversionError: unreadable file, missing columns, an empty value, a row without text,
            an image outside ``images_dir``, or one (image, text) pair given twice; the message
            names the file, the line and the value.
    """
    csv_path, images_dir = Path(csv_file), Path(images_dir)
    masks_root = Path(masks_dir) if masks_dir is not None else csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConversionError(f"cannot read pairs CSV {csv_path}: {err}") from err
    missing_cols = [c for c in ("image", "mask") if c not in columns]
    if missing_cols:
        raise ConversionError(
            f"{csv_path}: header {columns} lacks the column(s) {missing_cols} (need image,mask[,text])"
        )
    out = []
    seen: dict[tuple[str, str], int] = {}
    root = images_dir.resolve()
    for i, row in enumerate(rows):
        line = i + 2
        image_value, mask_value = (row.get("image") or "").strip(), (row.get("mask") or "").strip()
        row_text = (row.get("text") or "").strip() or (text or "").strip()
        if not image_value or not mask_value:
            raise ConversionError(f"{csv_path}: line {line}: empty image or mask value ({row})")
        if not row_text:
            raise ConversionError(f"{csv_path}: line {line}: no text (give a text column or --text)")
        image_path = _resolve(image_value, images_dir).resolve()
        if not image_path.is_relative_to(root):
            raise ConversionError(
                f"{csv_path}: line {line}: image {image_value!r} is outside the image folder {images_dir}"
            )
        name = image_path.relative_to(root).as_posix()
        if (name, row_text) in seen:
            raise ConversionError(
                f"{csv_path}: line {line}: image {name!r} with text {row_text!r} is already on line "
                f"{seen[(name, row_text)]}: two masks for one object"
            )
        seen[(name, row_text)] = line
        out.append((line, name, _resolve(mask_value, masks_root), row_text))
    if not out:
        raise ConversionError(f"{csv_path}: no rows")
    return out


def convert_pairs_csv(
    csv_file: str | Path,
    images_dir: str | Path,
    *,
    masks_dir: str | Path | None = None,
    text: str | None = None,
    fmt: MaskFormat = "rle",
    tolerance: float = 0.0,
    threshold: int = 127,
    allow_missing: bool = False,
    skip_empty: bool = False,
    suspicion: SuspicionCheck | None = SuspicionCheck(),
) -> ConversionResult:
    """Build records from an explicit image,mask[,text] CSV (see :func:`read_pairs_csv`).

    Unpaired files are listed with their reason: a row whose mask file does not exist
    (``missing``), a row whose image does not exist (``orphans``) and an image of
    ``images_dir`` (top level, :data:`IMAGE_EXTENSIONS`) that no row names (``missing``). They are
    errors unless ``allow_missing``. Records follow the order of first appearance in the CSV.
    """
    csv_path, images_dir = Path(csv_file), Path(images_dir)
    if not images_dir.is_dir():
        raise ConversionError(f"image folder not found: {images_dir}")
    rows = read_pairs_csv(csv_path, images_dir, masks_dir=masks_dir, text=text)
    result = ConversionResult()
    plan: dict[str, _Planned] = {}
    for line, name, mask_path, row_text in rows:
        image_path = images_dir / name
        where = f"{csv_path} line {line}"
        if not image_path.is_file():
            result.orphans.append((str(mask_path), f"{where} names image {image_path}, which does not exist"))
            continue
        item = plan.setdefault(name, _Planned(image_path, name))
        if not mask_path.is_file():
            result.missing.append((str(image_path), str(mask_path), where))
            continue
        item.objects.append((mask_path, row_text))
    named = {(images_dir / n).resolve() for n in plan} | {(images_dir / n).resolve() for _, n, _, _ in rows}
    for path in list_images(images_dir):
        if path.resolve() not in named:
            result.missing.append((str(path), "", f"no row of {csv_path} names it"))
    _raise_unpaired(result, allow_missing)
    _build_records(
        list(plan.values()),
        result,
        fmt=fmt,
        tolerance=tolerance,
        threshold=threshold,
        skip_empty=skip_empty,
        suspicion=suspicion,
    )
    return result


# -------------------------------------------------------------------------------------------- COCO


def _coco_part(segm: list | dict, height: int, width: int, where: str) -> list:
    """COCO ``segmentation`` -> list of parts (polygons kept, RLE compressed to a str)."""
    if isinstance(segm, list):
        if not segm:
            raise ConversionError(f"{where}: empty segmentation")
        parts = []
        for k, poly in enumerate(segm):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                raise ConversionError(f"{where}: polygon {k} has {n} coordinates, needs an even count >= 6")
            parts.append(list(poly))
        return parts
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ConversionError(f"{where}: RLE size {segm['size']} != image size [{height}, {width}]")
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
                raise ConversionError(
                    f"{where}: uncompressed RLE counts must be ints >= 0 summing to {height * width}"
                )
            compressed = coco_mask.frPyObjects(segm, height, width)["counts"]
            counts = compressed.decode("ascii")
        elif isinstance(counts, bytes):
            counts = counts.decode("ascii")
        return [{"size": [height, width], "counts": counts}]
    raise ConversionError(f"{where}: unsupported segmentation {type(segm).__name__} (need polygons or RLE)")


def _coco_reference_mask(segms: list, height: int, width: int) -> np.ndarray:
    """Union of COCO segmentations decoded the pycocotools way (the round-trip reference)."""
    out = np.zeros((height, width), dtype=bool)
    for segm in segms:
        if isinstance(segm, list):
            rle = coco_mask.merge(coco_mask.frPyObjects(segm, height, width))
        elif isinstance(segm["counts"], list):
            rle = coco_mask.frPyObjects(segm, height, width)
        else:
            counts = segm["counts"]
            rle = {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
        with warnings.catch_warnings():  # pycocotools 2.0.11 + numpy 2: "__array__ ... copy keyword"
            warnings.simplefilter("ignore", DeprecationWarning)
            out |= coco_mask.decode(rle).astype(bool)
    return out


def convert_coco(
    coco_file: str | Path, *, per_instance: bool = False, verify: bool = True
) -> ConversionResult:
    """Convert a COCO instances JSON into records (category name -> text).

    Annotations of one category in one image become ONE object (their segmentations are its parts)
    unless ``per_instance`` (one object per annotation, text repeated). Objects are ordered by
    category id (or annotation order with ``per_instance``). Polygons are kept as polygons and RLE
    (``iscrowd``) stays RLE, compressed to a string, so the conversion is lossless. Image paths are
    COCO ``file_name`` values (relative to the COCO image folder). Images without annotations are
    listed in ``result.without_objects``.

    Args:
        verify: decode every object and compare it with the pycocotools decoding of the source.

    Raises:
        ConversionError: unreadable JSON, unknown image/category ids, malformed segmentations.
    """
    path = Path(coco_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(f"cannot read COCO file {path}: {err}") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise ConversionError(f"{path}: not a COCO instances file (no {key!r} list)")
    categories = {c["id"]: c["name"] for c in data["categories"]}
    images = {img["id"]: img for img in data["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann.get('id')}"
        if ann.get("image_id") not in images:
            raise ConversionError(f"{where}: unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in categories:
            raise ConversionError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        if "segmentation" not in ann:
            raise ConversionError(f"{where}: no 'segmentation' (bounding boxes alone cannot become masks)")
        by_image.setdefault(ann["image_id"], []).append(ann)

    result = ConversionResult()
    for image_id, image in images.items():
        anns = by_image.get(image_id, [])
        name, height, width = image["file_name"], int(image["height"]), int(image["width"])
        if not anns:
            result.without_objects.append(name)
            continue
        if per_instance:
            groups = [[ann] for ann in anns]
        else:
            grouped: dict[int, list[dict]] = {}
            for ann in anns:
                grouped.setdefault(ann["category_id"], []).append(ann)
            groups = [grouped[c] for c in sorted(grouped)]
        texts, objects = [], []
        for group in groups:
            parts: list = []
            for ann in group:
                where = f"{path}: annotation id {ann.get('id')} (image {name!r})"
                parts.extend(_coco_part(ann["segmentation"], height, width, where))
            text = categories[group[0]["category_id"]]
            texts.append(text)
            objects.append(parts)
            if verify:
                reference = _coco_reference_mask([a["segmentation"] for a in group], height, width)
                decoded = decode_object_mask(parts, height, width)
                ids = ",".join(str(a.get("id")) for a in group)
                result.round_trips.append(
                    compare_masks(
                        reference, decoded, image=name, text=text, source_name=f"annotation(s) {ids}"
                    )
                )
        record = {"id": str(image_id), "image": name, "text": texts, "mask": objects}
        result.records.append(record)
    return result


# ------------------------------------------------------------------------------------------ report


def format_report(result: ConversionResult, *, per_image: bool = True) -> str:
    """Human-readable round-trip report (per object, then overall), plus unpaired, empty, unused and
    suspicious files."""
    lines = []
    if per_image:
        for rt in result.round_trips:
            lines.append(
                f"{rt.image} [{rt.text}]: dice {rt.dice:.4f}, {rt.pixels_differ} px differ "
                f"(source {rt.source_pixels} px, decoded {rt.decoded_pixels} px), components "
                f"{rt.components_source} -> {rt.components_decoded}, "
                f"holes {rt.holes_source} -> {rt.holes_decoded}"
            )
    for image, mask, why in result.missing:
        lines.append(
            f"MISSING mask {mask} for image {image} ({why})"
            if mask
            else f"MISSING mask for image {image} ({why})"
        )
    for mask, why in result.orphans:
        lines.append(f"MASK WITHOUT IMAGE {mask}: {why}")
    for path in result.unmatched_images:
        lines.append(f"IGNORED image-type file {path}: it does not fit the image pattern")
    for s in result.suspicious:
        lines.append(f"SUSPICIOUS mask {s.mask} for image {s.image} [{s.text}]: {'; '.join(s.reasons)}")
    for mask in result.empty:
        lines.append(f"EMPTY mask skipped: {mask}")
    for mask, value, pixels in result.unmapped_ids:
        lines.append(f"UNMAPPED id {value} skipped in {mask} ({pixels} px): no text for it in the id map")
    lines.extend(result.notes)
    for image in result.without_objects:
        lines.append(f"NO RECORD for image {image} (no mask/annotation)")
    if result.unused:
        shown = ", ".join(result.unused[:10]) + (" ..." if len(result.unused) > 10 else "")
        lines.append(f"UNUSED files in the mask folder ({len(result.unused)}): {shown}")
    rts = result.round_trips
    if rts:
        differ = sum(rt.pixels_differ for rt in rts)
        total = sum(rt.source_pixels for rt in rts)
        dices = [rt.dice for rt in rts]
        comp_changed = sum(rt.components_source != rt.components_decoded for rt in rts)
        hole_changed = sum(rt.holes_source != rt.holes_decoded for rt in rts)
        lines.append(
            f"overall: {len(result.records)} records, {len(rts)} objects, {differ} px differ "
            f"({total} source foreground px), dice mean {np.mean(dices):.4f} min {min(dices):.4f}, "
            f"{comp_changed} objects changed component count, {hole_changed} changed hole count, "
            f"{'EXACT' if result.exact else 'NOT exact'}"
        )
    else:
        lines.append(f"overall: {len(result.records)} records, 0 objects")
    return "\n".join(lines)
