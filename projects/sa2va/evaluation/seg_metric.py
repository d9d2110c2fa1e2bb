"""mmengine ``Metric`` over Sa2VA predictions: Dice / IoU / clDice at 0.5 and at a tuned threshold.

:class:`SegMetric` consumes what ``Sa2VAModel(mode='predict')`` returns (per sample ``image_id``,
``texts``, ``probs [n, H, W]`` float in [0, 1], ``gt [n, H, W]`` bool) and keeps, per sample, the
compact state of a :class:`~projects.sa2va.evaluation.metrics.SegEvaluator` (confusion counts over
the threshold grid + zlib-compressed bin maps, 15-170 KB per 512x512 query instead of 1 MB of
probabilities). Under torchrun every rank evaluates its own shard; :meth:`SegMetric.evaluate`
gathers all shards, keeps each query exactly once (distributed samplers pad the last batch with
repeated samples: duplicates are recognised by query key and checked to be identical), computes
the metrics on rank 0 and broadcasts them.

Query key: ``"{image_id}|{object index}|{text}"``.

Reported metrics (under ``prefix``, default ``val``): ``dice``, ``iou``, ``cl_dice``, ``precision``,
``recall``, ``cIoU`` at 0.5; ``dice_best``, ``iou_best``, ``cl_dice_best`` at ``best_threshold``,
which is the grid value maximising mean Dice on this very set, or the fixed ``threshold`` given to
the metric (e.g. one chosen on a separate validation set; then ``dice_oracle`` /
``oracle_threshold`` report what the best threshold on this set would have given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mmengine.dist import all_gather_object, broadcast_object_list, get_world_size, is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from .metrics import DEFAULT_THRESHOLDS, SegEvaluator

__all__ = ["SegMetric", "merge_sample_states", "query_key"]


def query_key(image_id: str, index: int, text: str) -> str:
    """The unique name of object ``index`` (referred to by ``text``) of image ``image_id``."""
    return f"{image_id}|{index}|{text}"


def _same_query(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two single-sample evaluator states hold identical queries (a padded duplicate)."""
    if a["keys"] != b["keys"] or a["shapes"] != b["shapes"] or a["n_gt"] != b["n_gt"]:
        return False
    return all(np.array_equal(x, y) for x, y in zip(a["tp"], b["tp"])) and all(
        np.array_equal(x, y) for x, y in zip(a["fp"], b["fp"])
    )


def merge_sample_states(
    results: Sequence[dict[str, Any]], thresholds: np.ndarray
) -> tuple[SegEvaluator, int]:
    """Merge per-sample evaluator states into one evaluator, each query once.

    Args:
        results: items ``{"image_id": str, "state": SegEvaluator.state_dict()}`` in any order,
            possibly with repeats (distributed sampler padding).
        thresholds: the grid every state must use.

    Returns:
        ``(evaluator, duplicates)``: queries sorted by key; the number of repeated samples dropped.

    Raises:
        ValueError: if two *different* samples share a query key (image ids must be unique per
            object), or a state uses another threshold grid.
    """
    by_key: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for res in results:
        state = res["state"]
        if not np.array_equal(np.asarray(state["thresholds"]), thresholds):
            raise ValueError(f"sample {res['image_id']!r}: threshold grid differs from the metric's")
        sample_key = "\n".join(state["keys"])
        seen = by_key.get(sample_key)
        if seen is None:
            by_key[sample_key] = state
        elif _same_query(seen, state):
            duplicates += 1
        else:
            raise ValueError(
                f"two different samples share the query keys {state['keys'][:3]} "
                f"(image {res['image_id']!r}): give every record a unique image path"
            )
    merged = SegEvaluator(thresholds)
    for sample_key in sorted(by_key):
        merged.merge(SegEvaluator.from_state_dict(by_key[sample_key]))
    return merged, duplicates


class SegMetric(BaseMetric):
    """Referring-segmentation metrics with a threshold sweep, for validation loops and ``tools/test.py``.

    Args:
        thresholds: strictly increasing probability grid (default ``0.00, 0.01, ..., 1.00``).
        threshold: a fixed threshold (on the grid) to report ``*_best`` at, e.g. chosen on a
            validation set; ``None`` picks the best threshold on the evaluated set itself.
        threshold_metric: sweep metric maximised to choose the threshold (``dice``; any
            :meth:`SegEvaluator.curve` metric).
        cl_dice: compute clDice (two skeletonisations per query and threshold, ~10 ms each); when
            False the ``cl_dice*`` keys are left out.
        collect_device, prefix: as in mmengine's ``BaseMetric``; results are gathered with
            ``all_gather_object`` (gloo on CPU, NCCL on GPU), never through a shared folder.

    After :meth:`evaluate`, rank 0 keeps the merged :class:`SegEvaluator` in ``last_evaluator``
    and the ``SegEvaluator.summary`` outputs in ``last_summaries`` (``{'at_0.5', 'at_best'}``).
    """

    default_prefix = "val"

    def __init__(
        self,
        *,
        thresholds: Any = None,
        threshold: float | None = None,
        threshold_metric: str = "dice",
        cl_dice: bool = True,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.thresholds = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, np.float64)
        grid_check = SegEvaluator(self.thresholds)  # validates the grid
        if threshold is not None:
            grid_check.threshold_index(threshold)
        if not np.isclose(self.thresholds, 0.5, atol=1e-9).any():
            raise ValueError("the threshold grid must contain 0.5 (metrics are reported at 0.5)")
        self.threshold = None if threshold is None else float(threshold)
        self.threshold_metric = threshold_metric
        self.cl_dice = cl_dice
        self.last_evaluator: SegEvaluator | None = None
        self.last_summaries: dict[str, dict[str, Any]] = {}
        self.last_duplicates = 0

    # -- per batch --------------------------------------------------------------------------------
    def process(self, data_batch: Any, data_samples: Sequence[dict[str, Any]]) -> None:
        """Store one compact evaluator state per sample.

        Args:
            data_batch: the dataloader batch (unused: everything needed is in the outputs).
            data_samples: ``Sa2VAModel.predict`` outputs, per sample ``image_id``, ``texts``
                (``n`` strings), ``probs [n, H, W]`` float in [0, 1], ``gt [n, H, W]`` bool.
        """
        for sample in data_samples:
            image_id = str(sample["image_id"])
            probs, gt = sample["probs"], sample["gt"]
            texts = list(sample.get("texts") or [])
            if probs.shape != gt.shape or probs.ndim != 3:
                raise ValueError(
                    f"sample {image_id!r}: probs {tuple(probs.shape)} and gt {tuple(gt.shape)} must be "
                    "equal [n, H, W]"
                )
            if texts and len(texts) != probs.shape[0]:
                raise ValueError(f"sample {image_id!r}: {len(texts)} texts for {probs.shape[0]} masks")
            ev = SegEvaluator(self.thresholds)
            for j in range(probs.shape[0]):
                ev.add(probs[j], gt[j], query_key(image_id, j, texts[j] if texts else ""))
            self.results.append({"image_id": image_id, "state": ev.state_dict()})

    # -- end of the loop --------------------------------------------------------------------------
    def evaluate(self, size: int) -> dict[str, float]:
        """Gather every rank's samples, drop padded repeats by key, compute on rank 0, broadcast.

        Args:
            size: number of samples in the dataset (a mismatch with the unique samples is logged).
        """
        parts = all_gather_object(self.results) if get_world_size() > 1 else [self.results]
        self.results = []
        metrics: list[Any] = [None]
        if is_main_process():
            gathered = [r for part in parts for r in part]
            values = self.compute_metrics(gathered)
            unique = len(gathered) - self.last_duplicates
            if unique != size:
                MMLogger.get_current_instance().warning(
                    f"SegMetric: {unique} unique samples evaluated but the dataset has {size} "
                    "(identical repeated records are counted once)"
                )
            metrics = [{f"{self.prefix}/{k}" if self.prefix else k: v for k, v in values.items()}]
        broadcast_object_list(metrics)
        return metrics[0]

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Metrics of the merged, de-duplicated samples (see the module docstring for the keys)."""
        if not results:
            raise ValueError("SegMetric received no samples: was the evaluation dataset empty?")
        ev, self.last_duplicates = merge_sample_states(results, self.thresholds)
        best_here = ev.best_threshold(self.threshold_metric)
        chosen = best_here if self.threshold is None else self.threshold
        at_05 = ev.summary(0.5, cl_dice=self.cl_dice)
        at_best = ev.summary(chosen, cl_dice=self.cl_dice)
        self.last_evaluator = ev
        self.last_summaries = {"at_0.5": at_05, "at_best": at_best}
        o5, ob = at_05["overall"], at_best["overall"]
        out = {name: o5[name] for name in ("dice", "iou", "cl_dice", "precision", "recall", "cIoU")}
        out.update(
            dice_best=ob["dice"],
            iou_best=ob["iou"],
            cl_dice_best=ob["cl_dice"],
            best_threshold=float(chosen),
        )
        if not self.cl_dice:
            del out["cl_dice"], out["cl_dice_best"]
        if self.threshold is not None:
            k = ev.threshold_index(best_here)
            out.update(dice_oracle=float(ev.curve("dice")[k]), oracle_threshold=best_here)
        MMLogger.get_current_instance().info(
            f"SegMetric over {len(ev)} queries ({self.last_duplicates} padded repeats dropped): "
            f"Dice {o5['dice']:.4f} / IoU {o5['iou']:.4f} / clDice {o5['cl_dice']:.4f} at 0.5; "
            f"Dice {ob['dice']:.4f} / IoU {ob['iou']:.4f} / clDice {ob['cl_dice']:.4f} at {chosen:.2f} "
            f"({'fixed' if self.threshold is not None else 'best on this set'})"
        )
        return out
