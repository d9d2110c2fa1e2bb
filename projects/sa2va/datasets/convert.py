"""Convert users' masks (a folder of binary mask PNGs, or COCO instances JSON) into annotation records.

Nothing is dropped silently: every component and hole of a mask is kept (RLE is exact), an image
without its mask file is an error unless explicitly allowed (then it is listed), and every object
comes with a round-trip measurement (decoded annotation vs. source mask).
"""

from __future__ import annotations

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

__all__ = [
    "IMAGE_EXTENSIONS",
    "ConversionError",
    "ConversionResult",
    "MaskSpec",
    "MissingMaskError",
    "RoundTrip",
    "compare_masks",
    "convert_coco",
    "convert_mask_folder",
    "count_components",
    "count_holes",
    "format_report",
    "list_images",
    "mask_to_parts",
    "read_binary_mask",
    "resize_image",
    "resize_mask",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MaskFormat = Literal["rle", "polygon"]


class ConversionError(ValueError):
    """The source data cannot be converted as asked (the message names the files at fault)."""


class MissingMaskError(ConversionError, FileNotFoundError):
    """An image has no mask file for one of the mask patterns."""


@dataclass(frozen=True)
class MaskSpec:
    """One object per image: its mask file name pattern (``str.format`` with ``stem``) and its text."""

    pattern: str
    text: str

    def __post_init__(self) -> None:
        if "{stem}" not in self.pattern:
            raise ValueError(f"mask pattern {self.pattern!r} must contain '{{stem}}' (the image file stem)")
        if not self.text.strip():
            raise ValueError(f"empty text for mask pattern {self.pattern!r}")

    def mask_name(self, stem: str) -> str:
        return self.pattern.format(stem=stem)


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
    missing: list[tuple[str, str]] = field(default_factory=list)  # (image path, expected mask path)
    empty: list[str] = field(default_factory=list)  # mask files with no foreground (skipped)
    unused: list[str] = field(default_factory=list)  # files in the mask folder no image used
    without_objects: list[str] = field(default_factory=list)  # images that got no record

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


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[H, W, C]`` uint8 to ``[height, width, C]`` with area interpolation (for shrinking)."""
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """Resize a bool ``[H, W]`` mask: area interpolation of the 0/1 values, then ``>= threshold``.

    Returns:
        bool ``[height, width]``.
    """
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return soft >= threshold


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
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as err:
        raise ConversionError(f"cannot read image {path}: {err}") from err
    return h, w


def convert_mask_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    specs: Sequence[MaskSpec],
    *,
    fmt: MaskFormat = "rle",
    tolerance: float = 0.0,
    threshold: int = 127,
    allow_missing: bool = False,
    skip_empty: bool = False,
) -> ConversionResult:
    """Build one record per image from binary mask files.

    For image ``images_dir/<stem>.<ext>`` and each spec, the mask ``masks_dir/spec.pattern(stem)``
    becomes one object (text ``spec.text``). Image paths in the records are relative to
    ``images_dir``. The two folders may be the same (mask files are then not taken as images).

    Args:
        specs: one per object, in the order of the record's ``text``/``mask`` lists.
        fmt: ``"rle"`` (exact) or ``"polygon"`` (lossy: holes filled, thin parts approximated).
        tolerance: polygon simplification in pixels (polygon format only).
        threshold: mask binarisation, ``gray > threshold`` on a 0..255 scale.
        allow_missing: a missing mask file is listed in ``result.missing`` instead of raising.
        skip_empty: an all-background mask is listed in ``result.empty`` instead of raising.

    Raises:
        MissingMaskError: a mask file is missing (names the image and the expected mask path).
        ConversionError: unreadable files, size mismatch, empty mask, duplicate image stems.
    """
    if not specs:
        raise ValueError("at least one MaskSpec is needed")
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not masks_dir.is_dir():
        raise ConversionError(f"mask folder not found: {masks_dir}")
    exclude: set[str] = set()
    if images_dir.resolve() == masks_dir.resolve():
        candidates = list_images(images_dir)
        exclude = {spec.mask_name(p.stem) for p in candidates for spec in specs}
    images = list_images(images_dir, sorted(exclude))
    if not images:
        raise ConversionError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise ConversionError(
                f"images {stems[path.stem]} and {path} share the stem {path.stem!r}: ambiguous masks"
            )
        stems[path.stem] = path

    result = ConversionResult()
    used: set[str] = set()
    for path in images:
        height, width = _image_size(path)
        texts: list[str] = []
        objects: list[list] = []
        for spec in specs:
            mask_path = masks_dir / spec.mask_name(path.stem)
            if not mask_path.is_file():
                if not allow_missing:
                    raise MissingMaskError(
                        f"image {path} has no mask file {mask_path} (pattern {spec.pattern!r}); "
                        "fix the name/pattern or pass --allow-missing to list such images instead"
                    )
                result.missing.append((str(path), str(mask_path)))
                continue
            used.add(mask_path.name)
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
            parts = mask_to_parts(mask, fmt, tolerance)
            decoded = decode_object_mask(parts, height, width)
            result.round_trips.append(
                compare_masks(mask, decoded, image=path.name, text=spec.text, source_name=str(mask_path))
            )
            texts.append(spec.text)
            objects.append(parts)
        if objects:
            result.records.append({"id": path.stem, "image": path.name, "text": texts, "mask": objects})
        else:
            result.without_objects.append(str(path))
    taken = {p.name for p in images} | used | exclude
    result.unused = sorted(
        str(p)
        for p in masks_dir.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in taken
    )
    logger.info(
        "converted %d images into %d records (%d objects)",
        len(images),
        len(result.records),
        len(result.round_trips),
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
    """Human-readable round-trip report (per object, then overall), plus missing/empty/unused files."""
    lines = []
    if per_image:
        for rt in result.round_trips:
            lines.append(
                f"{rt.image} [{rt.text}]: dice {rt.dice:.4f}, {rt.pixels_differ} px differ "
                f"(source {rt.source_pixels} px, decoded {rt.decoded_pixels} px), components "
                f"{rt.components_source} -> {rt.components_decoded}, "
                f"holes {rt.holes_source} -> {rt.holes_decoded}"
            )
    for image, mask in result.missing:
        lines.append(f"MISSING mask {mask} for image {image}")
    for mask in result.empty:
        lines.append(f"EMPTY mask skipped: {mask}")
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
