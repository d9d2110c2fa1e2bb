"""Deterministic train/val split of annotation records, grouped by image."""

from __future__ import annotations

import posixpath
import random
from collections.abc import Sequence
from pathlib import Path

from .annotations import write_annotations

__all__ = ["split_records", "write_split"]


def _image_key(record: dict) -> str:
    return posixpath.normpath(str(record["image"]).replace("\\", "/"))


def split_records(records: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split records so that all records of one image land in the same side.

    The distinct images are sorted, shuffled with ``random.Random(seed)`` (stable across Python
    versions and independent of the input order) and the first ``round(val_fraction * n_images)``
    go to val; with ``0 < val_fraction < 1`` and at least 2 images, each side gets >= 1 image.
    Records keep their input order inside each side.

    Args:
        records: annotation records (see ``annotations.py``), each with an ``"image"`` path.
        val_fraction: fraction of IMAGES (not records) for validation, in ``[0, 1]``.
        seed: shuffle seed.

    Returns:
        ``(train, val)`` lists of the same record objects.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    images = sorted({_image_key(r) for r in records})
    n_val = round(val_fraction * len(images))
    if 0.0 < val_fraction < 1.0 and len(images) >= 2:
        n_val = min(max(n_val, 1), len(images) - 1)
    shuffled = random.Random(seed).sample(images, len(images))
    val_images = set(shuffled[:n_val])
    train = [r for r in records if _image_key(r) not in val_images]
    val = [r for r in records if _image_key(r) in val_images]
    return train, val


def write_split(
    train: Sequence[dict],
    val: Sequence[dict],
    out_dir: str | Path,
    *,
    train_name: str = "train.json",
    val_name: str = "val.json",
) -> tuple[Path, Path]:
    """Write ``out_dir/train.json`` and ``out_dir/val.json``; returns their paths.

    Image paths stay relative to the same image folder as the source annotation file.
    """
    out = Path(out_dir)
    return write_annotations(train, out / train_name), write_annotations(val, out / val_name)
