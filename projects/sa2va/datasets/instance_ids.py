"""Instance-ID masks: one mask image per image whose pixel values are object ids (0 = background).

Each id of a mask becomes one object of the image's record; its text comes from an id map
(:class:`IdTexts`), for all files or per mask file. Nothing is dropped silently: an id without a text
is an error naming the file and the id (or, on request, skipped and listed with its pixel count), and
two ids with the same text in one image are an error (or, on request, one object: their union). Every
object is encoded, decoded back and compared with ``ids == id`` of the source (the converter's round
trip), so the records reproduce the id image exactly (:func:`reconstruct_ids`).

Id images: 8-bit grey or palette (the palette index is the id), 16-bit or 32-bit grey PNG / TIFF;
colour images are refused (an id is one number per pixel).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mmengine.logging import MMLogger
from PIL import Image

from .annotations import decode_object_mask
from .convert import (
    ConversionError,
    ConversionResult,
    MaskFormat,
    MaskSpec,
    Suspicion,
    SuspicionCheck,
    _clip,
    _image_size,
    _list_unused,
    _pair_mask_folder,
    _read_image,
    check_suspicious,
    compare_masks,
    mask_to_parts,
)

__all__ = [
    "DEFAULT_KEY",
    "IdTexts",
    "ask_together",
    "convert_instance_folder",
    "probs_to_ids",
    "read_instance_ids",
    "reconstruct_ids",
    "save_id_image",
]

#: Key of the entries for every file in a per-file JSON id map.
DEFAULT_KEY = "*"
DEFAULT_SUSPICION = SuspicionCheck()
_ID_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


def _parse_id(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ConversionError(f"{where}: id {value!r} is not a non-negative integer")
    number = int(text)
    if number == 0:
        raise ConversionError(f"{where}: id 0 is the background and cannot have a text")
    return number


def _parse_text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConversionError(f"{where}: text must be a non-empty string, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class IdTexts:
    """Referring texts of instance ids: for every mask file (``default``) and per mask file name.

    A per-file entry wins over the default for that file and id.

    Attributes:
        default: id -> text for every mask file.
        per_file: mask file name -> (id -> text).
        source: where the map was read from (for messages).
    """

    default: Mapping[int, str] = field(default_factory=dict)
    per_file: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    source: str = "<id map>"

    def text(self, mask_name: str, value: int) -> str | None:
        """The text of id ``value`` in the mask file ``mask_name`` (a file name), or None."""
        own = self.per_file.get(mask_name)
        if own is not None and value in own:
            return own[value]
        return self.default.get(value)

    @classmethod
    def from_file(cls, path: str | Path) -> IdTexts:
        """Read a ``.json`` or ``.csv`` id map.

        JSON: ``{"1": "optic disc", "2": "blood vessel"}`` (every file), or per file
        ``{"*": {"1": "optic disc"}, "0003.png": {"1": "optic cup"}}`` (``"*"``: every file; other keys:
        mask file names). CSV: a header with ``id,text`` and optionally ``file`` (a mask file name; empty:
        every file).

        Raises:
            ConversionError: unreadable file, id 0, a non-integer id, an empty text, an id given twice
                for one file; the message names the file and the entry.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls._from_json(path)
        if suffix == ".csv":
            return cls._from_csv(path)
        raise ConversionError(f"id map {path}: expected a .json or .csv file")

    @classmethod
    def _from_json(cls, path: Path) -> IdTexts:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"cannot read id map {path}: {err}") from err
        if not isinstance(data, dict) or not data:
            raise ConversionError(f"id map {path}: expected a non-empty JSON object {{id: text}}")
        nested = [isinstance(v, dict) for v in data.values()]
        if any(nested) and not all(nested):
            raise ConversionError(
                f'id map {path}: mixes id entries and per-file objects; use {{"{DEFAULT_KEY}": '
                '{id: text}, "<mask file>": {id: text}} for per-file texts'
            )

        def table(entries: dict, where: str) -> dict[int, str]:
            return {_parse_id(k, where): _parse_text(v, f"{where}, id {k}") for k, v in entries.items()}

        if not all(nested):
            return cls(default=table(data, str(path)), source=str(path))
        default = table(data.get(DEFAULT_KEY, {}), f"{path} [{DEFAULT_KEY!r}]")
        per_file = {
            name: table(entries, f"{path} [{name!r}]")
            for name, entries in data.items()
            if name != DEFAULT_KEY
        }
        return cls(default=default, per_file=per_file, source=str(path))

    @classmethod
    def _from_csv(cls, path: Path) -> IdTexts:
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = [c.strip() for c in reader.fieldnames or []]
                reader.fieldnames = columns
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ConversionError(f"cannot read id map {path}: {err}") from err
        missing = [c for c in ("id", "text") if c not in columns]
        if missing:
            raise ConversionError(f"id map {path}: header {columns} lacks the column(s) {missing}")
        default: dict[int, str] = {}
        per_file: dict[str, dict[int, str]] = {}
        for line, row in enumerate(rows, start=2):
            where = f"{path}: line {line}"
            value = _parse_id(row.get("id") or "", where)
            text = _parse_text(row.get("text") or "", where)
            name = (row.get("file") or "").strip()
            target = per_file.setdefault(name, {}) if name else default
            if value in target:
                raise ConversionError(f"{where}: id {value} of {name or 'every file'} is given twice")
            target[value] = text
        if not rows:
            raise ConversionError(f"id map {path}: no rows")
        return cls(default=default, per_file=per_file, source=str(path))


def read_instance_ids(path: str | Path) -> np.ndarray:
    """Read an instance-ID mask: int64 ``[H, W]``, 0 = background.

    8-bit grey (``L``), 1-bit, palette (``P``: the palette index is the id), 16-bit (``I;16``) and
    32-bit (``I``) grey are read as they are; a float image (``F``) only when every value is a
    non-negative integer.

    Raises:
        ConversionError: unreadable file, a colour image, negative or fractional values.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in _ID_MODES:
                raise ConversionError(
                    f"instance-ID mask {path} has {mode} pixels; ids must be one value per pixel "
                    "(8/16-bit grey or a palette image), not colours"
                )
            values = np.array(im)
    except OSError as err:
        raise ConversionError(f"cannot read instance-ID mask {path}: {err}") from err
    if values.ndim != 2:
        raise ConversionError(f"instance-ID mask {path}: expected one channel, got shape {values.shape}")
    if mode == "F" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        raise ConversionError(f"instance-ID mask {path}: float values that are not integers")
    ids = values.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ConversionError(f"instance-ID mask {path}: negative value {int(ids.min())}")
    return ids


def reconstruct_ids(record: dict, height: int, width: int) -> np.ndarray:
    """Rebuild the id image of a record written by :func:`convert_instance_folder`.

    Every object's pixels get its id (``record["instance_ids"][i]``, one id per object unless ids
    were merged: then the smallest). Returns int64 ``[height, width]``, 0 elsewhere.
    """
    out = np.zeros((height, width), dtype=np.int64)
    for obj, ids in zip(record["mask"], record["instance_ids"], strict=True):
        out[decode_object_mask(obj, height, width)] = min(ids)
    return out


def probs_to_ids(probs: np.ndarray, threshold: float, ids: Sequence[int] | None = None) -> np.ndarray:
    """Compose per-object probabilities into one instance-ID image (the inverse of the conversion).

    A pixel gets the id of the most probable object among those whose probability exceeds
    ``threshold`` (the first such object on ties), 0 when none does.

    Args:
        probs: float ``[n, H, W]`` in [0, 1], one map per ``[SEG]`` in order.
        threshold: as for the binary masks (``probs > threshold``).
        ids: the id of each object (default ``1..n``); positive, distinct.

    Returns:
        int64 ``[H, W]``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be [n, H, W], got shape {probs.shape}")
    n = probs.shape[0]
    values = np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(list(ids), dtype=np.int64)
    if values.shape != (n,) or (values < 1).any() or len(set(values.tolist())) != n:
        raise ValueError(f"ids must be {n} distinct positive integers, got {list(values)}")
    if n == 0:
        return np.zeros(probs.shape[1:], dtype=np.int64)
    above = probs > threshold
    best = np.where(above, probs, -np.inf).argmax(axis=0)
    return np.where(above.any(axis=0), values[best], 0)


def save_id_image(ids: np.ndarray, path: str | Path) -> Path:
    """Write an id image losslessly: 8-bit grey when every id <= 255, else 16-bit (PNG / TIFF).

    Raises:
        ValueError: ids outside 0..65535, or a 16-bit image asked for in a format without 16-bit grey.
    """
    ids = np.asarray(ids)
    path = Path(path)
    if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() > 65535)):
        raise ValueError(f"{path}: ids must be [H, W] in 0..65535, got shape {ids.shape}")
    if ids.size == 0 or ids.max() <= 255:
        Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
    elif path.suffix.lower() in (".png", ".tif", ".tiff"):
        Image.fromarray(ids.astype(np.uint16)).save(path)
    else:
        raise ValueError(f"{path}: ids above 255 need a 16-bit format (.png or .tif)")
    if not np.array_equal(read_instance_ids(path), ids.astype(np.int64)):
        raise ValueError(f"{path}: the written id image reads back differently")
    return path


@dataclass
class _Unmapped:
    mask: str
    value: int
    pixels: int


def convert_instance_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    id_texts: IdTexts,
    *,
    mask_pattern: str = "{stem}.png",
    image_pattern: str | None = None,
    fmt: MaskFormat = "rle",
    tolerance: float = 0.0,
    allow_missing: bool = False,
    skip_empty: bool = False,
    skip_unmapped: bool = False,
    merge_same_text: bool = False,
    suspicion: SuspicionCheck | None = DEFAULT_SUSPICION,
) -> ConversionResult:
    """Build one record per image from its instance-ID mask (pairing: :func:`~.convert.convert_mask_folder`).

    Objects are the ids of the mask in increasing order, each with its text from ``id_texts``;
    ``record["instance_ids"]`` holds, per object, the id(s) it came from.

    Args:
        mask_pattern: the id mask's file name pattern, e.g. ``"{stem}.png"``.
        skip_unmapped: an id without a text is skipped and listed (``result.unmapped_ids``) instead
            of raising.
        merge_same_text: ids of one image sharing a text become one object (their union) instead of
            raising.
        skip_empty: a mask without any id is listed (``result.empty``) instead of raising.
        Others: see :func:`~.convert.convert_mask_folder`.

    Raises:
        MissingMaskError: unpaired files. ConversionError: unreadable or colour masks, size
            mismatch, ids without text (all of them listed), ids sharing a text, an empty mask.
    """
    spec = MaskSpec(mask_pattern, "instance ids")
    plan, result, taken = _pair_mask_folder(images_dir, masks_dir, [spec], image_pattern, allow_missing)
    unmapped: list[_Unmapped] = []
    seen_ids: set[tuple[str, int]] = set()
    for item in plan:
        if not item.objects:  # no mask file (listed as missing, allowed)
            result.without_objects.append(str(item.image))
            continue
        ((mask_path, _),) = item.objects
        record = _instance_record(
            item.image,
            item.name,
            mask_path,
            id_texts,
            result,
            unmapped,
            seen_ids,
            fmt=fmt,
            tolerance=tolerance,
            skip_empty=skip_empty,
            merge_same_text=merge_same_text,
            suspicion=suspicion,
        )
        if record is not None:
            result.records.append(record)
        else:
            result.without_objects.append(str(item.image))
    if unmapped and not skip_unmapped:
        lines = [f"{u.mask}: id {u.value} ({u.pixels} px) has no text" for u in unmapped]
        raise ConversionError(
            f"{len(unmapped)} id(s) without a text in the id map {id_texts.source}; add them to the map, or "
            "pass --skip-unmapped-ids to skip and list them:\n  " + _clip(lines)
        )
    result.unmapped_ids = [(u.mask, u.value, u.pixels) for u in unmapped]
    mask_names = {Path(m).name for item in plan for m, _ in item.objects}
    for name in sorted(set(id_texts.per_file) - mask_names):
        result.notes.append(f"ID MAP entry {name!r} of {id_texts.source} names no paired mask file")
    for value in sorted(id_texts.default):
        if not any(v == value for _, v in seen_ids):
            result.notes.append(f"ID MAP id {value} ({id_texts.default[value]!r}) occurs in no mask")
    _list_unused(result, Path(masks_dir), taken)
    _logger().info(
        f"converted {len(plan)} instance-ID masks into {len(result.records)} records "
        f"({len(result.round_trips)} objects, {len(result.unmapped_ids)} ids skipped)"
    )
    return result


def _instance_record(
    image: Path,
    name: str,
    mask_path: Path,
    id_texts: IdTexts,
    result: ConversionResult,
    unmapped: list[_Unmapped],
    seen_ids: set[tuple[str, int]],
    *,
    fmt: MaskFormat,
    tolerance: float,
    skip_empty: bool,
    merge_same_text: bool,
    suspicion: SuspicionCheck | None,
) -> dict | None:
    """The record of one image from its id mask (None: no object), round trips into ``result``."""
    height, width = _image_size(image)
    ids = read_instance_ids(mask_path)
    if ids.shape != (height, width):
        raise ConversionError(
            f"mask {mask_path} is {ids.shape[1]}x{ids.shape[0]} but image {image} is {width}x{height} (w x h)"
        )
    values, counts = np.unique(ids, return_counts=True)
    present = [(int(v), int(c)) for v, c in zip(values, counts) if v != 0]
    if not present:
        if not skip_empty:
            raise ConversionError(
                f"instance-ID mask {mask_path} (image {image}) holds no id (all 0); pass --skip-empty to "
                "list such masks instead"
            )
        result.empty.append(str(mask_path))
        return None
    by_text: dict[str, list[int]] = {}
    for value, pixels in present:
        text = id_texts.text(mask_path.name, value)
        seen_ids.add((mask_path.name, value))
        if text is None:
            unmapped.append(_Unmapped(str(mask_path), value, pixels))
            continue
        by_text.setdefault(text, []).append(value)
    shared = {t: v for t, v in by_text.items() if len(v) > 1}
    if shared and not merge_same_text:
        text, group = next(iter(shared.items()))
        raise ConversionError(
            f"instance-ID mask {mask_path}: ids {group} share the text {text!r}, so one question would have "
            "several answers; give each id its own text (per-file map entries), or pass --merge-same-text "
            "to make them one object"
        )
    pixels_rgb: np.ndarray | None = None
    texts: list[str] = []
    objects: list[list] = []
    sources: list[list[int]] = []
    for text, group in sorted(by_text.items(), key=lambda kv: kv[1][0]):
        mask = np.isin(ids, group)
        if suspicion is not None:
            if pixels_rgb is None and suspicion.fov_iou is not None:
                pixels_rgb = _read_image(image)
            reasons = check_suspicious(mask, pixels_rgb, suspicion)
            if reasons:
                where = f"{mask_path} id {'+'.join(map(str, group))}"
                result.suspicious.append(Suspicion(str(image), where, text, tuple(reasons)))
        parts = mask_to_parts(mask, fmt, tolerance)
        decoded = decode_object_mask(parts, height, width)
        source = f"{mask_path} id{'s' if len(group) > 1 else ''} {'+'.join(map(str, group))}"
        result.round_trips.append(compare_masks(mask, decoded, image=name, text=text, source_name=source))
        texts.append(text)
        objects.append(parts)
        sources.append(group)
    if not objects:
        return None
    return {"id": image.stem, "image": name, "text": texts, "mask": objects, "instance_ids": sources}


def ask_together(records: Sequence[dict]) -> list[dict]:
    """Records whose objects are all asked for in one question (``"turns": [[0, ..., n - 1]]``).

    Records with one object are returned unchanged (one object is one turn already); a record that
    already has ``"turns"`` is an error (the caller would silently replace them).
    """
    out = []
    for index, record in enumerate(records):
        if "turns" in record:
            raise ConversionError(f"record {index} ({record.get('image')!r}) already has turns")
        n = len(record["mask"])
        out.append(dict(record, turns=[list(range(n))]) if n > 1 else dict(record))
    return out
