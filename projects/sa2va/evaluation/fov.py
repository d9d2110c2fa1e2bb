"""Scoring inside the field of view (FOV), as the retinal literature reports vessel segmentation.

A :class:`FovSource` gives one FOV mask per evaluated image: either files of a folder, found by a
name pattern (:mod:`projects.sa2va.datasets.pairing`; default ``"{stem}_mask.*"``, which finds
DRIVE's ``21_training_mask.gif`` for ``21_training.tif``), or ``auto``: the image's grey level
(ITU-R 601 luma, 0..255) ``> 10`` with its holes filled (:func:`projects.sa2va.datasets.fov.auto_fov`).
The metric state of an evaluated :class:`~.seg_metric.SegMetric` is then re-scored with pixels
outside the FOV left out (:meth:`~.metrics.SegEvaluator.restricted`); the whole-image figures are
not changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from mmengine.logging import MMLogger

from ..datasets.convert import ConversionError, read_binary_mask
from ..datasets.fov import AUTO_FOV_THRESHOLD, auto_fov
from ..datasets.pairing import NamePattern, PartnerIndex, PatternError, image_fields
from ..datasets.prepare import read_pixels
from .metrics import SegEvaluator, write_report

__all__ = ["AUTO", "DEFAULT_FOV_PATTERN", "FovResult", "FovSource", "score_fov", "write_fov_outputs"]

AUTO = "auto"
DEFAULT_FOV_PATTERN = "{stem}_mask.*"
FOV_DIR = "fov"


@dataclass(frozen=True)
class FovSource:
    """Where FOV masks come from: ``folder`` + ``pattern`` (+ ``image_pattern`` for named fields),
    or ``folder=None`` for the automatic FOV at grey level ``threshold``."""

    folder: Path | None = None
    pattern: str = DEFAULT_FOV_PATTERN
    image_pattern: str | None = None
    threshold: float = AUTO_FOV_THRESHOLD

    @classmethod
    def parse(cls, value: str, pattern: str | None = None, image_pattern: str | None = None) -> FovSource:
        """``"auto"`` or a folder (``--fov-masks``), with the folder's name patterns.

        Raises:
            ValueError: a missing folder, patterns with ``auto``, or a bad pattern.
        """
        if value == AUTO:
            if pattern or image_pattern:
                raise ValueError(
                    "--fov-pattern/--fov-image-pattern are for a folder of FOV masks, not 'auto'"
                )
            return cls()
        folder = Path(value)
        if not folder.is_dir():
            raise ValueError(f"FOV mask folder {folder} not found (give a folder or 'auto')")
        source = cls(folder, pattern or DEFAULT_FOV_PATTERN, image_pattern)
        source.index([])  # validates the patterns
        return source

    def describe(self) -> str:
        if self.folder is None:
            return f"auto: image grey level > {self.threshold:g} (0..255), holes filled"
        shown = f", image pattern {self.image_pattern!r}" if self.image_pattern else ""
        return f"masks {self.folder}/{self.pattern}{shown}"

    def index(self, names: list[str]) -> PartnerIndex:
        try:
            image_pat = NamePattern(self.image_pattern) if self.image_pattern else None
            return PartnerIndex(names, NamePattern(self.pattern), image_pat)
        except PatternError as err:
            raise ValueError(str(err)) from err

    def masks(self, image_ids: list[str], shapes: list[tuple[int, int]], image_root: str | Path) -> dict:
        """One bool ``[H, W]`` FOV mask per image id (paths relative to ``image_root``).

        Raises:
            FileNotFoundError: images without a FOV mask (all named, with the expected file).
            ValueError: several FOV files for one image, an image pattern that does not fit, a
                mask of another size than its image, or an empty FOV.
        """
        out: dict[str, np.ndarray] = {}
        index = (
            None
            if self.folder is None
            else self.index([p.name for p in self.folder.iterdir() if p.is_file()])
        )
        missing = []
        for image_id, shape in zip(image_ids, shapes):
            if image_id in out:
                continue
            if index is None:
                fov = auto_fov(read_pixels(Path(image_root) / image_id), self.threshold)
                where = f"auto FOV of {Path(image_root) / image_id}"
            else:
                name = PurePosixPath(image_id).name
                image_pat = NamePattern(self.image_pattern) if self.image_pattern else None
                fields = image_fields(name, image_pat)
                if fields is None:
                    raise ValueError(
                        f"image {image_id!r} does not fit --fov-image-pattern {self.image_pattern!r}"
                    )
                found = index.find(fields)
                if not found:
                    missing.append(f"{image_id} (expected {self.folder / index.expected(fields)})")
                    continue
                if len(found) > 1:
                    raise ValueError(f"image {image_id!r} has {len(found)} FOV masks: {', '.join(found)}")
                where = str(self.folder / found[0])
                try:
                    fov = read_binary_mask(self.folder / found[0])
                except ConversionError as err:
                    raise ValueError(str(err)) from err
            if fov.shape != tuple(shape):
                raise ValueError(
                    f"{where} is {fov.shape[1]}x{fov.shape[0]} but its image is {shape[1]}x{shape[0]}"
                )
            if not fov.any():
                raise ValueError(f"{where} is empty: nothing would be scored")
            out[image_id] = fov
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) without a FOV mask ({self.describe()}): " + "; ".join(missing[:10])
            )
        return out


@dataclass
class FovResult:
    """Metrics inside the FOV: summaries at 0.5 and at ``threshold`` (:meth:`SegEvaluator.summary`)."""

    evaluator: SegEvaluator
    at_05: dict[str, Any]
    at_best: dict[str, Any]
    threshold: float
    chosen_on: str
    oracle_threshold: float
    fov_fraction: float  # mean fraction of the image inside the FOV


def _image_id(key: str) -> str:
    return key.split("|", 1)[0]


def restrict(
    evaluator: SegEvaluator, source: FovSource, image_root: str | Path
) -> tuple[SegEvaluator, float]:
    """``evaluator`` re-scored inside the FOV, and the mean fraction of the pixels inside it."""
    ids = [_image_id(k) for k in evaluator.keys]
    shapes = [evaluator.shape(i) for i in range(len(evaluator))]
    masks = source.masks(ids, shapes, image_root)
    valid = [masks[i] for i in ids]
    return evaluator.restricted(valid), float(np.mean([m.mean() for m in valid]))


def score_fov(
    evaluator: SegEvaluator,
    source: FovSource,
    image_root: str | Path,
    *,
    threshold: float | None = None,
    chosen_on: str = "",
    threshold_metric: str = "dice",
    cl_dice: bool = True,
) -> FovResult:
    """Metrics of ``evaluator``'s queries inside the FOV, at 0.5 and at ``threshold`` (``None``: the
    grid value maximising ``threshold_metric`` inside the FOV on this very set)."""
    fov_ev, fraction = restrict(evaluator, source, image_root)
    best_here = fov_ev.best_threshold(threshold_metric)
    chosen = best_here if threshold is None else float(threshold)
    result = FovResult(
        evaluator=fov_ev,
        at_05=fov_ev.summary(0.5, cl_dice=cl_dice),
        at_best=fov_ev.summary(chosen, cl_dice=cl_dice),
        threshold=chosen,
        chosen_on=chosen_on or "the evaluated (test) set itself, inside the FOV: optimistic",
        oracle_threshold=best_here,
        fov_fraction=fraction,
    )
    o5, ob = result.at_05["overall"], result.at_best["overall"]
    MMLogger.get_current_instance().info(
        f"inside the FOV ({source.describe()}; {100 * fraction:.1f} % of the pixels) over "
        f"{len(fov_ev)} queries: {_figures(o5, cl_dice)} at 0.5; {_figures(ob, cl_dice)} at {chosen:.2f} "
        f"({'fixed' if threshold is not None else 'best on this set'})"
    )
    return result


def _figures(overall: dict[str, Any], cl_dice: bool) -> str:
    text = f"Dice {overall['dice']:.4f} / IoU {overall['iou']:.4f}"
    return text + (f" / clDice {overall['cl_dice']:.4f}" if cl_dice else "")


def write_fov_outputs(result: FovResult, source: FovSource, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/fov/{report.json, per_image.csv, best_threshold.json}`` and add a ``"fov"``
    section to ``out_dir/report.json`` (the whole-image figures there are left as they are)."""
    out = Path(out_dir)
    fov_dir = out / FOV_DIR
    report_path, csv_path = write_report(result.at_05, result.at_best, result.threshold, fov_dir)
    section = {
        "source": source.describe(),
        "fov_fraction": result.fov_fraction,
        "threshold": result.threshold,
        "threshold_chosen_on": result.chosen_on,
        "oracle_threshold": result.oracle_threshold,
        "at_0.5": result.at_05["overall"],
        "at_best": result.at_best["overall"],
    }
    fov_report = json.loads(report_path.read_text())
    fov_report.update(
        scored="inside the field of view", source=section["source"], threshold_chosen_on=result.chosen_on
    )
    report_path.write_text(json.dumps(_clean(fov_report), indent=2) + "\n")
    thr_path = fov_dir / "best_threshold.json"
    thr_path.write_text(
        json.dumps(
            {
                "threshold": round(result.threshold, 6),
                "chosen_on": result.chosen_on,
                "scored": "inside the field of view",
                "test_dice_at_threshold": result.at_best["overall"]["dice"],
            },
            indent=2,
        )
        + "\n"
    )
    main_report = out / "report.json"
    if main_report.is_file():
        report = json.loads(main_report.read_text())
        report["fov"] = section
        main_report.write_text(json.dumps(_clean(report), indent=2) + "\n")
    return [report_path, csv_path, thr_path]


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
