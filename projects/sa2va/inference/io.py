"""Files in and out of prediction: image lists, image reading, mask / probability / overlay PNGs.

Output layout for an image ``<stem>.<ext>`` with ``n`` masks (``k = 0 .. n-1``, in [SEG] order):

* ``<stem>_mask{k}.png``: 8-bit grey, 255 inside the mask, 0 outside, original image size;
* ``<stem>_prob{k}.png``: 8-bit grey, ``round(255 * probability)``;
* ``<stem>_overlay.png``: the image with every mask blended in (one colour per mask);
* ``<stem>_ids.png`` (only when asked for): one instance-ID image, mask ``k`` -> id ``k + 1``, 0 where no
  mask is (a pixel inside several masks gets the most probable one's id;
  :func:`~projects.sa2va.datasets.instance_ids.probs_to_ids`), 8-bit grey (16-bit above 255 masks);
* ``predictions.json`` (one per run, written at its end): generated text, the object each mask's ``[SEG]``
  names in it (``objects``), file names and threshold per image;
* ``predictions.jsonl`` and ``run_settings.json`` (see :mod:`projects.sa2va.run_records`): one line per
  image appended as soon as its files are written, and the settings of the run, so that a killed run keeps
  its work and ``tools/predict.py --skip-existing`` reuses it.

Every PNG is written to a temporary file renamed over the target: a killed run never leaves a
half-written one under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..datasets.image_io import IMAGE_EXTENSIONS, read_image_array
from ..run_records import save_image_atomic, write_atomic

if TYPE_CHECKING:  # the predictor pulls in torch / transformers: keep file checks import-light
    from .predictor import Prediction

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_COLORS",
    "PREDICTIONS_FILE",
    "PREDICTIONS_RECORDS",
    "RUN_SETTINGS_FILE",
    "check_images_readable",
    "entry_files",
    "list_images",
    "read_image",
    "save_id_image_atomic",
    "save_prediction",
    "write_predictions_json",
]

PREDICTIONS_FILE = "predictions.json"
#: Base name of the per-image record file ``predictions.jsonl`` (see
#: :class:`projects.sa2va.run_records.RunRecords`).
PREDICTIONS_RECORDS = "predictions"
RUN_SETTINGS_FILE = "run_settings.json"
#: Overlay colours of masks 0, 1, 2, ... (cycled).
MASK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 128, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
)


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def list_images(paths: Sequence[str | Path], report: Callable[[str], None] | None = None) -> list[Path]:
    """Expand image files and folders (their files with an image extension, sorted, not recursive).

    ``report`` (e.g. a print to stderr) is told, per folder, what in it is not read: subfolders and files
    without an image extension, so that nothing is left out silently.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a folder holds no image, or two images share a file stem (their outputs would
            overwrite each other).
    """
    if not paths:
        raise ValueError("no image paths given")
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(
                    f"folder {path} holds no image file (no file with an extension PIL opens, such as "
                    ".jpg, .png, .tif, .bmp, .ppm)"
                )
            out.extend(found)
            entries = sorted(path.iterdir())
            subfolders = [p for p in entries if p.is_dir()]
            others = [p for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS]
            if report is not None and (subfolders or others):
                parts = [f"{len(subfolders)} subfolder(s) ({_names(subfolders)})"] if subfolders else []
                parts += (
                    [f"{len(others)} file(s) without an image extension ({_names(others)})"] if others else []
                )
                report(
                    f"folder {path}: {' and '.join(parts)} not read (a folder is read one level deep; "
                    "name subfolders too)"
                )
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"image path {path} does not exist")
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise ValueError(f"images {stems[p.stem]} and {p} share the stem {p.stem!r}: outputs would clash")
        stems[p.stem] = p
    return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB, by the toolkit's one rule
    (:mod:`projects.sa2va.datasets.image_io`: EXIF orientation, 16-bit / float scaled, alpha dropped).

    Raises:
        OSError: the file cannot be opened or decoded, or is truncated (the message names it).
    """
    return read_image_array(path)


def check_images_readable(paths: Sequence[str | Path]) -> None:
    """Decode every file completely (as :func:`read_image` will) so that a truncated or corrupt image
    fails before any model is built, not after hours of predictions.

    Raises:
        OSError: naming the first file that is not a readable image.
    """
    for path in paths:
        read_image_array(path)


def save_prediction(
    pred: Prediction, image: np.ndarray, out_dir: str | Path, stem: str, *, id_image: bool = False
) -> dict[str, Any]:
    """Write the mask, probability and overlay PNGs of one image (and its instance-ID PNG).

    Args:
        pred: the image's :class:`Prediction` (``probs`` / ``masks`` ``[n, H, W]``).
        image: ``[H, W, 3]`` uint8 RGB, the image predicted on.
        out_dir: output folder (created).
        stem: file-name stem of the outputs.
        id_image: also write ``<stem>_ids.png`` (mask ``k`` -> id ``k + 1``, see the module doc).

    Returns:
        the image's ``predictions.json`` entry: ``text``, ``num_masks``, ``objects`` (per mask, the
        object its ``[SEG]`` names in ``text``, :func:`~projects.sa2va.datasets.refseg.answer_object_texts`;
        ``None`` for a bare ``[SEG]``), ``masks``, ``probs``, ``overlay`` (file names relative to
        ``out_dir``), ``threshold``, ``foreground_fraction``; with ``id_image`` also ``id_image``.

    Raises:
        ValueError: the prediction's shape does not fit the image, or its text holds another number of
            ``[SEG]`` than it has masks.
    """
    # matplotlib, torch, mmengine: imported only when writing (file checks stay import-light)
    from ..datasets.instance_ids import probs_to_ids
    from ..datasets.refseg import answer_object_texts
    from ..evaluation.plots import overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    if pred.probs.shape[1:] != (h, w) or pred.masks.shape != pred.probs.shape:
        raise ValueError(
            f"{stem}: prediction of shape {pred.probs.shape} / {pred.masks.shape} for an image of {h}x{w}"
        )
    objects = answer_object_texts(pred.text)
    if len(objects) != pred.num_masks:
        raise ValueError(
            f"{stem}: the answer {pred.text!r} holds {len(objects)} [SEG], "
            f"the prediction {pred.num_masks} masks"
        )
    mask_files, prob_files = [], []
    blended = image
    for k in range(pred.num_masks):
        mask_name, prob_name = f"{stem}_mask{k}.png", f"{stem}_prob{k}.png"
        save_image_atomic(Image.fromarray(pred.masks[k].astype(np.uint8) * 255), out / mask_name)
        prob8 = np.clip(np.rint(pred.probs[k] * 255.0), 0, 255).astype(np.uint8)
        save_image_atomic(Image.fromarray(prob8), out / prob_name)
        blended = overlay(blended, pred.masks[k], color=MASK_COLORS[k % len(MASK_COLORS)], alpha=0.5)
        mask_files.append(mask_name)
        prob_files.append(prob_name)
    overlay_name = f"{stem}_overlay.png"
    save_image_atomic(Image.fromarray(blended), out / overlay_name)
    entry = {
        "text": pred.text,
        "num_masks": pred.num_masks,
        "objects": objects,
        "masks": mask_files,
        "probs": prob_files,
        "overlay": overlay_name,
        "threshold": pred.threshold,
        "foreground_fraction": [float(m.mean()) for m in pred.masks],
    }
    if id_image:
        entry["id_image"] = f"{stem}_ids.png"
        save_id_image_atomic(probs_to_ids(pred.probs, pred.threshold), out / entry["id_image"])
    return entry


def save_id_image_atomic(ids: np.ndarray, path: str | Path) -> Path:
    """:func:`~projects.sa2va.datasets.instance_ids.save_id_image` (lossless, read back and compared)
    to a temporary file in the same folder, renamed over ``path``: never a half-written id image."""
    from ..datasets.instance_ids import save_id_image

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        save_id_image(ids, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def entry_files(entry: dict[str, Any]) -> list[str]:
    """The output files of a :func:`save_prediction` entry, relative to its ``out_dir``."""
    return [
        *entry["masks"],
        *entry["probs"],
        entry["overlay"],
        *([entry["id_image"]] if "id_image" in entry else []),
    ]


def write_predictions_json(entries: list[dict[str, Any]], out_dir: str | Path, **meta: Any) -> Path:
    """Write ``predictions.json`` (atomically): ``{**meta, "images": entries}``; returns its path."""
    path = Path(out_dir) / PREDICTIONS_FILE
    write_atomic(path, (json.dumps({**meta, "images": entries}, indent=2) + "\n").encode())
    return path
