"""Annotation records: the single source of truth for reading, validating and decoding them.

An annotation file (``annotations.json``) is a JSON list of records::

    {"id": "x",                       # optional, str
     "image": "x.jpg",                # path relative to the image folder
     "text": ["blood vessel", ...],   # text[i] describes mask[i]
     "mask": [obj_0, obj_1, ...]}     # one object per text

Each object is a non-empty LIST of parts; a part is EITHER

* a polygon: flat ``[x1, y1, x2, y2, ...]`` (>= 3 points) in pixel coordinates of the image
  (x right, y down, origin at the top-left corner of the top-left pixel, COCO convention), or
* a COCO RLE dict ``{"size": [h, w], "counts": "<compressed str>"}`` (pycocotools format,
  column-major runs starting with background); uncompressed ``counts`` (list of ints) is accepted.

All parts of one object are OR-ed (union, never summed). Polygons alone cannot represent holes
(a hole contour OR-ed with its outer contour is simply filled), which is why RLE parts exist:
an RLE part is exact, pixel for pixel. Files holding only polygons (the reference schema) stay valid.

Optional ``"turns"``: which objects are asked for together. A turn is one question and its answer; by
default every object is its own turn (one question, an answer with one ``[SEG]``). With ::

    "text": ["optic disc", "blood vessel", "fovea"], "mask": [m0, m1, m2],
    "turns": [[0, 1], [2]]

objects 0 and 1 are asked for in one question ("Please segment the optic disc and blood vessel.") whose
answer holds two ``[SEG]`` tokens, mask 0 for the first and mask 1 for the second, and object 2 in a
second turn. ``turns`` is a list of non-empty lists of object indices that uses every object exactly
once (no object is left out silently, none is asked for twice); :func:`record_turns` reads it.

Other keys of a record are ignored by this module.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mmengine.logging import MMLogger
from PIL import Image
from pycocotools import mask as coco_mask

from .image_io import read_image
from .reserved_text import find_reserved_markers

__all__ = [
    "AnnotationError",
    "MaskFormatError",
    "Problem",
    "decode_object_mask",
    "decode_record_masks",
    "decode_rle_counts",
    "encode_mask_rle",
    "load_annotations",
    "mask_to_polygons",
    "read_annotation_file",
    "record_turns",
    "validate_record",
    "validate_records",
    "write_annotations",
]

#: Bump when :mod:`.image_io`'s rule changes what it accepts: older cache entries are then ignored.
DECODE_CACHE_VERSION = 1
DECODE_CACHE_ENV = "SA2VA_IMAGE_CHECK_CACHE"


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


REQUIRED_KEYS = ("image", "text", "mask")
CHECK_TOOL = "python tools/check_dataset.py"


def _format_location(
    file: str | Path, index: int | None, field: str | None, message: str, image: str | None
) -> str:
    text = str(file)
    if index is not None:
        text += f": record {index}"
        if image:
            text += f" ({image!r})"
    if field:
        text += f", field {field!r}"
    return f"{text}: {message}"


@dataclass(frozen=True)
class Problem:
    """One problem found in an annotation file.

    Attributes:
        file: the annotation file (as given by the caller).
        index: 0-based record index, or None for a file-level problem.
        field: the offending field, e.g. ``"mask[1][0]"``, or None for the whole record/file.
        message: what is wrong, with the value at fault.
        image: the record's image path when it is known (only used to make the text readable).
    """

    file: str
    index: int | None
    field: str | None
    message: str
    image: str | None = None

    def __str__(self) -> str:
        return _format_location(self.file, self.index, self.field, self.message, self.image)


class AnnotationError(ValueError):
    """An annotation file or record is invalid.

    ``str(err)`` reads like ``data/x/annotations.json: record 3 ('img_07.jpg'), field 'mask[1][0]':
    polygon has 2 points, needs >= 3``.
    """

    def __init__(
        self,
        file: str | Path,
        index: int | None,
        field: str | None,
        message: str,
        image: str | None = None,
    ) -> None:
        self.file = str(file)
        self.index = index
        self.field = field
        self.message = message
        self.image = image
        super().__init__(_format_location(self.file, index, field, message, image))

    def __reduce__(self) -> tuple:  # picklable across worker processes despite the custom __init__
        return type(self), (self.file, self.index, self.field, self.message, self.image)

    @classmethod
    def from_problem(cls, problem: Problem, message: str | None = None) -> AnnotationError:
        """Build the error for ``problem``, optionally with a longer message."""
        return cls(
            problem.file,
            problem.index,
            problem.field,
            problem.message if message is None else message,
            problem.image,
        )


class MaskFormatError(ValueError):
    """A mask part cannot be decoded (malformed polygon or RLE, or RLE size != requested size)."""


# --------------------------------------------------------------------------------------------- RLE


def decode_rle_counts(counts: str | bytes) -> list[int]:
    """Parse a COCO compressed RLE string into run lengths.

    Format (pycocotools): every run length is a variable-length integer written 5 bits per
    character as ``chr(48 + chunk)``; bit 0x20 of a chunk means "more chunks follow", bit 0x10 of
    the last chunk is the sign; from the third run on, values are stored as the difference to the
    run two positions earlier.

    Raises:
        MaskFormatError: bad character or truncated number.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift = 0, 0
        while True:
            if pos >= n:
                raise MaskFormatError(f"RLE counts string is truncated at character {pos}")
            chunk = ord(counts[pos]) - 48
            if not 0 <= chunk <= 63:
                raise MaskFormatError(f"RLE counts string has invalid character {counts[pos]!r} at {pos}")
            pos += 1
            value |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                if chunk & 0x10:
                    value |= -1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_runs(part: dict) -> tuple[int, int, np.ndarray]:
    """Validate an RLE part; return ``(h, w, runs)`` with ``runs`` int64 summing to ``h * w``.

    Raises:
        MaskFormatError: any malformation (checked here because pycocotools' C decoder does not
            bound-check the runs and would write past its buffer).
    """
    missing = [k for k in ("size", "counts") if k not in part]
    if missing:
        raise MaskFormatError(f"RLE dict lacks key(s) {missing}; expected {{'size': [h, w], 'counts': ...}}")
    size = part["size"]
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise MaskFormatError(f"RLE size must be [h, w] with positive ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = part["counts"]
    if isinstance(counts, str | bytes):
        runs = decode_rle_counts(counts)
    elif isinstance(counts, list | tuple):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise MaskFormatError("uncompressed RLE counts must be a list of ints")
        runs = list(counts)
    else:
        raise MaskFormatError(f"RLE counts must be a str or a list of ints, got {type(counts).__name__}")
    arr = np.asarray(runs, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise MaskFormatError(f"RLE counts has a negative run ({int(arr.min())}): corrupted string")
    total = int(arr.sum())
    if total != h * w:
        raise MaskFormatError(f"RLE runs sum to {total} pixels but size {h}x{w} needs {h * w}")
    return h, w, arr


def _rle_area(runs: np.ndarray) -> int:
    return int(runs[1::2].sum())


def _decode_runs(runs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Runs (background first, column-major) -> bool ``[h, w]``."""
    values = (np.arange(runs.size) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T.copy()


def encode_mask_rle(mask: np.ndarray) -> dict:
    """Encode a binary mask as a JSON-serialisable COCO RLE dict.

    Args:
        mask: bool ``[H, W]``, in image pixel coordinates.

    Returns:
        ``{"size": [H, W], "counts": str}`` (compressed pycocotools string).

    Raises:
        TypeError: ``mask`` is not a bool array. ValueError: not 2-D.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool numpy array, got {getattr(mask, 'dtype', type(mask))}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


# ---------------------------------------------------------------------------------------- polygons


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _polygon_problem(part: list, image_size: tuple[int, int] | None) -> str | None:
    """Return a message if the polygon is malformed, else None."""
    if not all(_is_number(v) for v in part):
        bad = next(v for v in part if not _is_number(v))
        if isinstance(bad, list | tuple):
            return "polygon must be a flat list [x1, y1, x2, y2, ...], got nested lists"
        return f"polygon coordinates must be numbers, got {bad!r}"
    if len(part) % 2:
        return f"polygon has an odd number of coordinates ({len(part)}); expected x, y pairs"
    if len(part) < 6:
        return f"polygon has {len(part) // 2} points, needs >= 3"
    coords = np.asarray(part, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(coords).all():
        return "polygon has NaN or infinite coordinates"
    if (coords < 0).any():
        return (
            f"polygon has negative coordinates (min x {coords[:, 0].min():g}, min y {coords[:, 1].min():g})"
        )
    if image_size is not None:
        h, w = image_size
        max_x, max_y = coords[:, 0].max(), coords[:, 1].max()
        if max_x > w or max_y > h:
            return f"polygon goes outside the {w}x{h} (w x h) image: max x {max_x:g}, max y {max_y:g}"
    return None


def _polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (already validated) with pycocotools and OR them -> bool ``[H, W]``."""
    out = np.zeros((height, width), dtype=bool)
    for rle in coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width):
        out |= _decode_runs(np.asarray(decode_rle_counts(rle["counts"]), dtype=np.int64), height, width)
    return out


def _polygon_area(polygon: Sequence[float], image_size: tuple[int, int] | None) -> int:
    """Rasterised pixel count of one (valid) polygon; without the image size, on its bounding canvas."""
    if image_size is None:
        coords = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        image_size = (math.ceil(coords[:, 1].max()) + 1, math.ceil(coords[:, 0].max()) + 1)
        if image_size[0] * image_size[1] > 1 << 28:  # absurd canvas: use the shoelace area instead
            x, y = coords[:, 0], coords[:, 1]
            return int(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0)
    rles = coco_mask.frPyObjects([[float(v) for v in polygon]], *image_size)
    return int(coco_mask.area(rles)[0])


# ---------------------------------------------------------------------------------------- decoding


def decode_object_mask(
    obj: Sequence[list | dict], height: int, width: int, *, validated: bool = False
) -> np.ndarray:
    """Decode one object (a list of polygon / RLE parts) into the union of its parts.

    Args:
        obj: non-empty list of parts (see module docstring).
        height, width: image size in pixels; every RLE part must have exactly this size.
        validated: the parts already passed :func:`validate_records` (as every record returned by
            :func:`load_annotations` has): compressed RLE strings then go straight to pycocotools' C
            decoder (~10x faster than the checking Python parser, which guards that decoder against
            corrupt runs it does not bound-check). The result is identical.

    Returns:
        bool ``[height, width]``.

    Raises:
        MaskFormatError: empty object, malformed part, polygon outside ``[0, width] x [0, height]``,
            or RLE size different from (height, width).
    """
    if not isinstance(obj, list | tuple) or not obj:
        raise MaskFormatError("an object must be a non-empty list of parts (polygons or RLE dicts)")
    out = np.zeros((height, width), dtype=bool)
    polygons = []
    for j, part in enumerate(obj):
        if isinstance(part, dict):
            if validated and isinstance(part.get("counts"), str) and list(part["size"]) == [height, width]:
                rle = {"size": [height, width], "counts": part["counts"].encode("ascii")}
                out |= coco_mask.decode(rle).astype(bool)
                continue
            h, w, runs = _rle_runs(part)
            if (h, w) != (height, width):
                raise MaskFormatError(f"part {j}: RLE size [{h}, {w}] != image size [{height}, {width}]")
            out |= _decode_runs(runs, h, w)
        elif isinstance(part, list | tuple):
            problem = _polygon_problem(list(part), (height, width))
            if problem:
                raise MaskFormatError(f"part {j}: {problem}")
            polygons.append(part)
        else:
            raise MaskFormatError(
                f"part {j}: must be a polygon list or an RLE dict, got {type(part).__name__}"
            )
    if polygons:
        out |= _polygons_to_mask(polygons, height, width)
    return out


def decode_record_masks(record: dict, height: int, width: int, *, validated: bool = False) -> np.ndarray:
    """Decode every object of a record (``validated``: see :func:`decode_object_mask`).

    Returns:
        bool ``[N, height, width]``, N = ``len(record["mask"])``, in the order of ``record["text"]``.
    """
    objects = record["mask"]
    if not objects:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack([decode_object_mask(obj, height, width, validated=validated) for obj in objects])


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """Trace every contour of a binary mask as polygons (external contours AND hole contours).

    Uses ``cv2.findContours(RETR_CCOMP, CHAIN_APPROX_SIMPLE)``: every connected component gives an
    external contour and every hole an inner contour, in OpenCV's two-level order. Vertices are the
    centres of boundary pixels shifted by +0.5 into the COCO continuous frame (pixel ``(x, y)``
    spans ``[x, x+1] x [y, y+1]``). Components whose contour has fewer than 3 distinct points (a
    single pixel or a straight 1-px line) become a thin rectangle around those pixels so they are
    not dropped.

    Polygons are LOSSY under this schema: parts are OR-ed, so a hole contour is filled rather than
    cut out, and boundary pixels are half-covered, so 1-3 px wide structures (vessels) are eroded or
    widened by rasterisation. Use :func:`encode_mask_rle` when exactness matters.

    Args:
        mask: bool ``[H, W]``.
        tolerance: Douglas-Peucker simplification in pixels (``0`` = no simplification).

    Returns:
        list of flat ``[x1, y1, x2, y2, ...]`` polygons (>= 3 points each), float pixel coordinates.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons: list[list[float]] = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        if tolerance > 0 and len(points) > 3:
            simplified = cv2.approxPolyDP(contour, tolerance, closed=True).reshape(-1, 2)
            if len(simplified) >= 3:
                points = simplified
        points = points.astype(np.float64) + 0.5
        if len(np.unique(points, axis=0)) < 3:
            x0, y0 = points.min(axis=0) - 0.5
            x1, y1 = points.max(axis=0) + 0.5
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


# -------------------------------------------------------------------------------------- validation


def _check_part(
    part: Any, image_size: tuple[int, int] | None
) -> tuple[str | None, int | None, tuple[int, int] | None]:
    """Check one part. Returns ``(problem message or None, area or None, rle size or None)``."""
    if isinstance(part, dict):
        try:
            h, w, runs = _rle_runs(part)
        except MaskFormatError as err:
            return str(err), None, None
        if image_size is not None and (h, w) != tuple(image_size):
            return (
                f"RLE size [{h}, {w}] does not match the image size "
                f"[{image_size[0]}, {image_size[1]}] (h, w)",
                None,
                (h, w),
            )
        return None, _rle_area(runs), (h, w)
    if isinstance(part, list | tuple):
        message = _polygon_problem(list(part), image_size)
        if message:
            return message, None, None
        return None, _polygon_area(part, image_size), None
    return f"a part must be a polygon (list of numbers) or an RLE dict, got {type(part).__name__}", None, None


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _turns_problems(turns: Any, n_objects: int | None) -> list[str]:
    """Why a record's ``turns`` value is invalid (module docstring); empty when it is valid.

    Args:
        turns: the value of the record's ``"turns"`` key.
        n_objects: the record's object count, or None when its ``mask`` / ``text`` lists are broken
            (then only the shape of ``turns`` is checked).
    """
    if not isinstance(turns, list) or not turns:
        shown = repr(turns)[:200]
        return [f"turns must be a non-empty list of lists of object indices, e.g. [[0, 1], [2]], got {shown}"]
    problems: list[str] = []
    seen: dict[int, int] = {}
    for t, turn in enumerate(turns):
        if not isinstance(turn, list) or not turn:
            problems.append(f"turn {t} must be a non-empty list of object indices, got {turn!r}")
            continue
        for value in turn:
            if not _is_index(value):
                problems.append(f"turn {t}: object index {value!r} is not an integer")
            elif n_objects is not None and not 0 <= value < n_objects:
                problems.append(
                    f"turn {t}: object index {value} is out of range (the record has {n_objects} objects, "
                    f"indices 0..{n_objects - 1})"
                )
            elif value in seen:
                where = "twice in this turn" if seen[value] == t else f"in turn {seen[value]} and turn {t}"
                problems.append(
                    f"object {value} is asked for {where}: every object belongs to exactly one turn"
                )
            else:
                seen[value] = t
    if n_objects is not None and not problems:
        left = [i for i in range(n_objects) if i not in seen]
        if left:
            problems.append(
                f"object(s) {left} are in no turn: every object must belong to exactly one turn "
                "(add them, e.g. as their own turn [i])"
            )
    return problems


def record_turns(record: dict) -> list[tuple[int, ...]]:
    """The turns of a (valid) record: its ``"turns"`` as tuples, else one turn per object.

    Returns:
        object indices per turn, e.g. ``[(0, 1), (2,)]``; ``[(0,), (1,), ...]`` without ``"turns"``.
    """
    turns = record.get("turns")
    if turns is None:
        return [(i,) for i in range(len(record["mask"]))]
    return [tuple(int(i) for i in turn) for turn in turns]


def image_path_problem(image: str) -> str | None:
    """Why ``image`` (a record's path) leaves the image folder: absolute, or ``..`` above it; else None.

    Checked on the text of the path (``os.path.normpath``), so a symlink inside the folder stays allowed.
    """
    if os.path.isabs(image):
        return f"image path {image!r} is absolute; paths are relative to the image folder"
    norm = os.path.normpath(image)
    if norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../"):
        return f"image path {image!r} leaves the image folder (it resolves to {norm!r})"
    return None


def validate_record(
    record: Any,
    index: int,
    file: str | Path,
    image_size: tuple[int, int] | None = None,
    *,
    allow_outside_root: bool = False,
) -> list[Problem]:
    """Check one record against the schema (module docstring); report every problem found.

    Args:
        record: the decoded JSON value.
        index: its 0-based position in the file (for messages).
        file: the annotation file (for messages).
        image_size: ``(h, w)`` of the image if known: enables RLE size and polygon upper-bound checks
            (coordinates may reach the border inclusive, ``0 <= x <= w``, ``0 <= y <= h``).
        allow_outside_root: accept absolute image paths and paths with ``..`` above the image folder
            (refused by default: :func:`image_path_problem`).

    Returns:
        the problems, empty if the record is valid.
    """
    file = str(file)
    if not isinstance(record, dict):
        return [Problem(file, index, None, f"record must be a JSON object, got {type(record).__name__}")]
    image = record.get("image") if isinstance(record.get("image"), str) else None
    problems: list[Problem] = []

    def add(field: str | None, message: str) -> None:
        problems.append(Problem(file, index, field, message, image))

    for key in REQUIRED_KEYS:
        if key not in record:
            add(key, f"missing key {key!r} (a record needs 'image', 'text' and 'mask')")
    if "image" in record and (not isinstance(record["image"], str) or not record["image"].strip()):
        add("image", f"image must be a non-empty relative path string, got {record['image']!r}")
    elif image and not allow_outside_root:
        outside = image_path_problem(image)
        if outside:
            add("image", f"{outside} (allow_outside_root=True / --allow-outside-root accepts it)")
    if "id" in record and not isinstance(record["id"], str):
        add("id", f"id must be a string, got {type(record['id']).__name__}")

    texts = record.get("text")
    if "text" in record:
        if not isinstance(texts, list):
            add("text", f"text must be a list of strings, got {type(texts).__name__}")
            texts = None
        elif not texts:
            add("text", "text is empty: a record needs at least one (text, mask) object")
        else:
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    add(f"text[{i}]", f"text must be a string, got {type(t).__name__}")
                elif not t.strip():
                    add(f"text[{i}]", "text is empty")
                elif markers := find_reserved_markers(t):
                    add(
                        f"text[{i}]",
                        f"text {t!r} contains {', '.join(markers)}, reserved for the prompt the model is "
                        "given (the image and [SEG] tokens and the chat template's markers)",
                    )

    objects = record.get("mask")
    if "mask" in record:
        if not isinstance(objects, list):
            add("mask", f"mask must be a list of objects (one per text), got {type(objects).__name__}")
            objects = None
        elif isinstance(texts, list) and len(texts) != len(objects):
            add("mask", f"{len(texts)} texts but {len(objects)} masks: text[i] must describe mask[i]")

    if "turns" in record:
        n_objects = len(objects) if isinstance(objects, list) else None
        for message in _turns_problems(record["turns"], n_objects):
            add("turns", message)

    first_rle: tuple[str, tuple[int, int]] | None = None
    for i, obj in enumerate(objects or []):
        if not isinstance(obj, list):
            add(f"mask[{i}]", f"an object must be a list of parts, got {type(obj).__name__}")
            continue
        if not obj:
            add(f"mask[{i}]", "empty mask: the object has no parts")
            continue
        if all(_is_number(v) for v in obj):
            add(
                f"mask[{i}]",
                "object is a flat list of numbers; it must be a LIST of parts, e.g. [[x1, y1, x2, y2, ...]]",
            )
            continue
        total_area, all_ok = 0, True
        for j, part in enumerate(obj):
            field = f"mask[{i}][{j}]"
            message, area, rle_size = _check_part(part, image_size)
            if message:
                add(field, message)
                all_ok = False
                continue
            total_area += area or 0
            if rle_size is not None and image_size is None:
                if first_rle is None:
                    first_rle = (field, rle_size)
                elif rle_size != first_rle[1]:
                    add(
                        field,
                        f"RLE size {list(rle_size)} differs from {list(first_rle[1])} of {first_rle[0]}",
                    )
        if all_ok and total_area == 0:
            add(f"mask[{i}]", "empty mask: the object decodes to 0 pixels")
    return problems


def _read_image_size(path: Path, decode: bool) -> tuple[int, int]:
    """Return ``(h, w)`` of the image as the dataset reads it (upright after EXIF orientation).

    With ``decode`` the whole file goes through :func:`~.image_io.read_image` (finds truncated and
    corrupt files, and values its rule refuses); else only the header is read.
    """
    if decode:
        w, h = read_image(path).size
        return h, w
    from .image_io import read_image_size

    w, h = read_image_size(path)
    return h, w


def decode_cache_file() -> Path:
    """Where decoded-image checks are remembered: ``$SA2VA_IMAGE_CHECK_CACHE``, else
    ``$XDG_CACHE_HOME/sa2va/image_checks.json`` (``~/.cache`` when unset)."""
    env = os.environ.get(DECODE_CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sa2va" / "image_checks.json"


class DecodeCache:
    """Images that decoded completely, keyed by (absolute path, byte size, mtime in ns) -> ``(h, w)``.

    Only successes are kept; a file changed since (size or mtime) is decoded again. The cache file is
    replaced atomically, so concurrent ranks at worst redo work. ``path=None``: remember nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[int]] = {}
        self.dirty = False
        if path is None or not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            _logger().warning(f"ignoring the image-check cache {path}: {err}")
            return
        if isinstance(data, dict) and data.get("version") == DECODE_CACHE_VERSION:
            entries = data.get("entries")
            self.entries = entries if isinstance(entries, dict) else {}

    @staticmethod
    def key(path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)

    def get(self, path: Path) -> tuple[int, int] | None:
        try:
            name, size, mtime = self.key(path)
        except OSError:
            return None
        entry = self.entries.get(name)
        if isinstance(entry, list) and len(entry) == 4 and entry[:2] == [size, mtime]:
            return int(entry[2]), int(entry[3])
        return None

    def put(self, path: Path, hw: tuple[int, int]) -> None:
        if self.path is None:
            return
        name, size, mtime = self.key(path)
        self.entries[name] = [size, mtime, int(hw[0]), int(hw[1])]
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"version": DECODE_CACHE_VERSION, "entries": self.entries})
            fd, tmp = tempfile.mkstemp(prefix=".image_checks.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(tmp, self.path)
        except OSError as err:  # a read-only home must not stop training; the check itself was done
            _logger().warning(f"could not write the image-check cache {self.path}: {err}")
        self.dirty = False


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar (count, rate, ETA) on stderr for rank 0 of a run, or None."""
    if not enabled or total == 0 or os.environ.get("RANK", "0") != "0":
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of transformers
        return None
    return tqdm(total=total, desc="decoding images", unit="img", leave=False)


def validate_records(
    records: Any,
    file: str | Path,
    image_root: str | Path | None = None,
    check_images: bool = True,
    *,
    decode_images: bool = True,
    allow_outside_root: bool = False,
    cache: DecodeCache | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Check a whole annotation list and report EVERY problem (nothing is skipped or fixed).

    Args:
        records: the decoded JSON of the file (should be a list of records).
        file: the annotation file (for messages).
        image_root: folder the ``image`` paths are relative to; None skips image checks.
        check_images: open every image (existence, readability, size for the mask checks).
        decode_images: decode every image completely with the dataset's reader (finds truncated and
            corrupt files before training starts); False reads headers only.
        allow_outside_root: accept image paths outside ``image_root`` (absolute, or ``..`` above it).
        cache: remembers images that decoded (:class:`DecodeCache`); None decodes every image.
        progress: show a progress bar while decoding.

    Returns:
        problems in record order; file-level problems have ``index=None``.
    """
    file = str(file)
    if not isinstance(records, list):
        return [
            Problem(
                file, None, None, f"the file must hold a JSON list of records, got {type(records).__name__}"
            )
        ]
    if not records:
        return [Problem(file, None, None, "the file holds no records")]
    problems: list[Problem] = []
    sizes: dict[str, tuple[int, int] | Exception] = {}
    seen: dict[str, int] = {}
    images = {
        r["image"]
        for r in records
        if isinstance(r, dict) and isinstance(r.get("image"), str) and r["image"].strip()
    }
    bar = _progress(len(images), progress and check_images and decode_images and image_root is not None)
    try:
        for index, record in enumerate(records):
            image_size = None
            image = record.get("image") if isinstance(record, dict) else None
            usable = isinstance(image, str) and image.strip()
            if usable and not allow_outside_root and image_path_problem(image):
                usable = False  # reported by validate_record; never opened
            if check_images and image_root is not None and usable:
                if image not in sizes:
                    sizes[image] = _checked_size(Path(image_root) / image, decode_images, cache)
                    if bar is not None:
                        bar.update(1)
                size = sizes[image]
                if isinstance(size, Exception):
                    problems.append(Problem(file, index, "image", str(size), image))
                else:
                    image_size = size
            problems.extend(
                validate_record(record, index, file, image_size, allow_outside_root=allow_outside_root)
            )
            if isinstance(record, dict):
                key = json.dumps(
                    [record.get("image"), record.get("text"), record.get("mask"), record.get("turns")],
                    sort_keys=True,
                    default=repr,
                )
                if key in seen:
                    problems.append(
                        Problem(
                            file,
                            index,
                            None,
                            f"duplicate of record {seen[key]} (same image, texts, masks and turns)",
                            image,
                        )
                    )
                else:
                    seen[key] = index
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.save()
    return problems


def _checked_size(path: Path, decode: bool, cache: DecodeCache | None) -> tuple[int, int] | Exception:
    """``(h, w)`` of one image, from the cache or by reading it; the error (naming the file) otherwise."""
    if decode and cache is not None:
        hit = cache.get(path)
        if hit is not None:
            return hit
    try:
        hw = _read_image_size(path, decode)
    except FileNotFoundError:
        return FileNotFoundError(f"image file not found: {path}")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        if not path.is_file():
            return FileNotFoundError(f"image file not found: {path}")
        message = str(err)
        return OSError(message if str(path) in message else f"cannot read image {path}: {message}")
    if decode and cache is not None:
        cache.put(path, hw)
    return hw


# ----------------------------------------------------------------------------------------- loading


def read_annotation_file(ann_file: str | Path) -> Any:
    """Read the JSON of an annotation file (no schema check).

    Raises:
        AnnotationError: missing file or invalid JSON (with line and column).
    """
    path = Path(ann_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(ann_file, None, None, "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(ann_file, None, None, f"cannot read annotation file: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            ann_file, None, None, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err


def load_annotations(
    ann_file: str | Path,
    image_root: str | Path,
    check_images: bool = True,
    *,
    allow_outside_root: bool = False,
    cache_file: str | Path | bool | None = True,
) -> list[dict]:
    """Read and validate an annotation file; return its records unchanged (count in == count out).

    With ``check_images`` every image is decoded completely, once, by the reader the dataset uses
    (a progress bar shows it); images that decoded are remembered in ``cache_file`` by path, size
    and modification time, so the next start only decodes new or changed files.

    Args:
        ann_file / image_root: the annotation file and the folder its ``image`` paths are relative to.
        check_images: decode every image (size checks of the masks need it).
        allow_outside_root: accept absolute image paths and ``..`` above ``image_root``.
        cache_file: the decode cache; ``True``: :func:`decode_cache_file`; ``None`` / ``False``: none.

    Raises:
        AnnotationError: the FIRST problem found; its message also gives the total number of
            problems and the command that lists them all. Records are never skipped or replaced.
    """
    records = read_annotation_file(ann_file)
    cache = None
    if check_images and cache_file:
        cache = DecodeCache(decode_cache_file() if cache_file is True else Path(cache_file))
    problems = validate_records(
        records,
        ann_file,
        image_root,
        check_images,
        allow_outside_root=allow_outside_root,
        cache=cache,
        progress=True,
    )
    if problems:
        first = problems[0]
        command = f"{CHECK_TOOL} {ann_file} --images {image_root}"
        if allow_outside_root:
            command += " --allow-outside-root"
        more = f"{len(problems)} problem(s) in total" if len(problems) > 1 else "1 problem in total"
        raise AnnotationError.from_problem(
            first, f"{first.message} [{more}; run `{command}` for the full list]"
        )
    n_objects = sum(len(r["mask"]) for r in records)
    _logger().info(f"loaded {len(records)} records ({n_objects} objects) from {ann_file}")
    return records


def write_annotations(records: Sequence[dict], out_file: str | Path) -> Path:
    """Write records as a JSON list, one record per line (diff-friendly); creates parent folders."""
    path = Path(out_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    path.write_text(f"[\n{lines}\n]\n" if records else "[]\n", encoding="utf-8")
    return path
