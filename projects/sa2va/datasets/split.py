"""Deterministic train/val splits of annotation records, grouped by image (or by a group of images).

Three ways to choose the validation (or test) side:

* at random: :func:`split_records` (seeded, a fraction of the images or of the groups);
* by naming images: :func:`select_images` from lists (text files of image names), globs or folders
  (e.g. the official ``test/images`` folder of a data set), then :func:`split_by_selection`;
* either way grouped by a regular expression (:func:`image_groups`): images with the same group
  (e.g. ``Image_09L`` and ``Image_09R`` of one patient with ``"Image_(\\d+)[LR]"``) always land
  on the same side.
"""

from __future__ import annotations

import fnmatch
import posixpath
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from .annotations import write_annotations

__all__ = [
    "SplitError",
    "image_groups",
    "image_key",
    "read_name_list",
    "select_images",
    "split_by_selection",
    "split_records",
    "write_split",
]

#: File types taken from a folder given as a side of the split.
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


class SplitError(ValueError):
    """A split cannot be made as asked (the message names the images, files or groups at fault)."""


def image_key(record: Mapping) -> str:
    """The record's image path, normalised (``./a.png`` and ``a.png`` are one image)."""
    return posixpath.normpath(str(record["image"]).replace("\\", "/"))


def image_groups(images: Iterable[str], group_regex: str | None) -> dict[str, str]:
    """Group of every image: the first capture group of ``re.search(group_regex, image)`` (the whole
    match when the expression has no group); without a regex every image is its own group.

    Raises:
        SplitError: an invalid expression, or an image it does not match (all such images named).
    """
    images = list(images)
    if group_regex is None:
        return {image: image for image in images}
    try:
        regex = re.compile(group_regex)
    except re.error as err:
        raise SplitError(f"--group-regex {group_regex!r} is not a regular expression: {err}") from err
    groups, unmatched = {}, []
    for image in images:
        found = regex.search(image)
        if found is None:
            unmatched.append(image)
            continue
        groups[image] = found.group(1) if regex.groups else found.group(0)
    if unmatched:
        raise SplitError(
            f"--group-regex {group_regex!r} does not match {len(unmatched)} image(s): {_shown(unmatched)}"
        )
    return groups


def _shown(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def split_records(
    records: Sequence[dict], val_fraction: float, seed: int, *, group_regex: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Split records at random so that all records of one image (or group) land on the same side.

    The distinct images (or groups, see :func:`image_groups`) are sorted, shuffled with
    ``random.Random(seed)`` (stable across Python versions and independent of the input order) and
    the first ``round(val_fraction * n)`` go to val; with ``0 < val_fraction < 1`` and at least 2
    images (groups), each side gets >= 1. Records keep their input order inside each side.

    Args:
        records: annotation records (see ``annotations.py``), each with an ``"image"`` path.
        val_fraction: fraction of IMAGES (or groups; not records) for validation, in ``[0, 1]``.
        seed: shuffle seed.
        group_regex: keep images of one group together (e.g. ``"Image_(\\d+)[LR]"``).

    Returns:
        ``(train, val)`` lists of the same record objects.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    groups = image_groups(sorted({image_key(r) for r in records}), group_regex)
    units = sorted(set(groups.values()))
    n_val = round(val_fraction * len(units))
    if 0.0 < val_fraction < 1.0 and len(units) >= 2:
        n_val = min(max(n_val, 1), len(units) - 1)
    shuffled = random.Random(seed).sample(units, len(units))
    val_units = set(shuffled[:n_val])
    val_images = {image for image, group in groups.items() if group in val_units}
    train = [r for r in records if image_key(r) not in val_images]
    val = [r for r in records if image_key(r) in val_images]
    return train, val


def read_name_list(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, name)`` of a text file of image names (blank lines and ``#`` comments skipped).

    Raises:
        SplitError: the file cannot be read.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SplitError(f"cannot read image list {path}: {err}") from err
    return [(i + 1, s.strip()) for i, s in enumerate(lines) if s.strip() and not s.strip().startswith("#")]


def _lookup(images: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for image in images:
        pure = PurePosixPath(image)
        by_name.setdefault(pure.name, []).append(image)
        by_stem.setdefault(pure.stem, []).append(image)
    return by_name, by_stem


def _resolve_name(name: str, images: set[str], by_name: dict, by_stem: dict) -> list[str]:
    """Images a listed name means: the exact path, else the file name, else the name without extension."""
    key = posixpath.normpath(name.replace("\\", "/"))
    if key in images:
        return [key]
    return by_name.get(key) or by_stem.get(key) or []


def select_images(
    images: Iterable[str],
    *,
    lists: Sequence[str | Path] = (),
    globs: Sequence[str] = (),
    folders: Sequence[str | Path] = (),
) -> set[str]:
    """The images named by text lists, glob patterns and folders (their union).

    A listed name is an image path as in the records, a file name, or a file name without its
    extension. A glob (``fnmatch``) is matched against the image path and its file name. A folder
    names its image files (by file name; not recursive).

    Raises:
        SplitError: a name or folder file that is not one of ``images`` (all of them named, with
            the list file and line), a name that fits several images, or a glob that matches none.
    """
    images = sorted(set(images))
    known = set(images)
    by_name, by_stem = _lookup(images)
    chosen: set[str] = set()
    unknown: list[str] = []
    for list_file in lists:
        for line, name in read_name_list(list_file):
            found = _resolve_name(name, known, by_name, by_stem)
            if not found:
                unknown.append(f"{name!r} ({list_file}:{line})")
            elif len(found) > 1:
                raise SplitError(f"{list_file}:{line}: {name!r} fits several images: {_shown(found)}")
            chosen.update(found)
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise SplitError(f"split folder not found: {folder}")
        files = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_EXTENSIONS
        )
        if not files:
            raise SplitError(f"split folder {folder} holds no image file ({', '.join(FOLDER_EXTENSIONS)})")
        for name in files:
            found = by_name.get(name, [])
            if not found:
                unknown.append(f"{name!r} (in folder {folder})")
            elif len(found) > 1:
                raise SplitError(
                    f"{folder / name}: several annotated images are named {name!r}: {_shown(found)}"
                )
            chosen.update(found)
    for pattern in globs:
        found = [
            i
            for i in images
            if fnmatch.fnmatchcase(i, pattern) or fnmatch.fnmatchcase(PurePosixPath(i).name, pattern)
        ]
        if not found:
            raise SplitError(f"glob {pattern!r} matches none of the {len(images)} annotated images")
        chosen.update(found)
    if unknown:
        raise SplitError(f"{len(unknown)} unknown image(s), not in the annotations: {_shown(unknown)}")
    return chosen


def split_by_selection(
    records: Sequence[dict],
    val_images: set[str],
    *,
    train_images: set[str] | None = None,
    group_regex: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """Split records by named images: ``val_images`` to val, the rest (or ``train_images``) to train.

    Args:
        records: annotation records.
        val_images: image keys (:func:`image_key`) of the validation / test side.
        train_images: when given, every image must be in exactly one of the two sets.
        group_regex: refuse a split that puts images of one group on both sides.

    Raises:
        SplitError: an image on both sides or on neither, or a group split across the sides (the
            images named).
    """
    images = sorted({image_key(r) for r in records})
    if train_images is not None:
        both = sorted(val_images & train_images)
        if both:
            raise SplitError(f"{len(both)} image(s) named for both train and val: {_shown(both)}")
        neither = sorted(set(images) - val_images - train_images)
        if neither:
            raise SplitError(f"{len(neither)} image(s) named for neither train nor val: {_shown(neither)}")
    groups = image_groups(images, group_regex)
    if group_regex is not None:
        sides: dict[str, dict[str, list[str]]] = {}
        for image, group in groups.items():
            sides.setdefault(group, {}).setdefault("val" if image in val_images else "train", []).append(
                image
            )
        split_groups = {g: s for g, s in sides.items() if len(s) == 2}
        if split_groups:
            shown = "; ".join(
                f"group {g!r}: train {_shown(s['train'], 3)} / val {_shown(s['val'], 3)}"
                for g, s in sorted(split_groups.items())[:5]
            )
            raise SplitError(
                f"{len(split_groups)} group(s) of --group-regex {group_regex!r} on both sides: {shown}"
            )
    train = [r for r in records if image_key(r) not in val_images]
    val = [r for r in records if image_key(r) in val_images]
    return train, val


def write_split(
    train: Sequence[dict],
    val: Sequence[dict],
    out_dir: str | Path,
    *,
    train_name: str = "train.json",
    val_name: str = "val.json",
) -> tuple[Path, Path]:
    """Write ``out_dir/train_name`` and ``out_dir/val_name``; returns their paths.

    Image paths stay relative to the same image folder as the source annotation file.
    """
    out = Path(out_dir)
    return write_annotations(train, out / train_name), write_annotations(val, out / val_name)
