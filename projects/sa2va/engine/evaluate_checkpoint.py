"""Evaluate a trained Sa2VA checkpoint on an annotations set: metrics, tuned threshold, report, plots.

The application behind ``tools/test.py`` (one process or one per GPU under torchrun); the pieces it runs
(datasets, recorded metric runs, report and plots) are :mod:`projects.sa2va.evaluation.evaluate`'s:

1. build the config's model through :func:`.builder.build_model`, seeded as training seeded (parts that
   no checkpoint holds, e.g. random frozen encoders of small test models, come out identical to
   training), with the trainable ``.pth`` (strict) or an exported Hugging Face folder loaded; the model
   is built only when a sample has to be run (not at all when every record of an earlier run is reused);
2. optionally run a *validation* set and pick the threshold maximising its mean Dice;
3. run the test set (every rank its own shard; :class:`~projects.sa2va.evaluation.seg_metric.SegMetric`
   gathers and keeps each query once) and report metrics at 0.5 and at the chosen threshold;
4. on rank 0 write ``report.json``, ``per_image.csv``, ``best_threshold.json``, ``pr_curve.png``,
   ``overlay_grid.png``, ``overlays/*.png`` and, when the checkpoint sits in a work dir with
   ``*/vis_data/scalars.json``, ``training_curves.png``.

Every sample's metric state is recorded as it comes (``out_dir/records/``, see
:mod:`projects.sa2va.evaluation.evaluate`), so a killed run resumes with ``skip_existing``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dist import barrier, get_dist_info, is_main_process
from mmengine.logging import MMLogger

from ..evaluation.evaluate import (
    RECORDS_DIR,
    SETTINGS_FILE,
    build_eval_dataset,
    find_scalars,
    init_distributed,
    run_set,
    write_outputs,
)
from ..evaluation.fov import FovSource, score_fov, write_fov_outputs
from ..evaluation.seg_metric import SegMetric
from ..evaluation.tiled import TiledEvalStep
from ..run_records import SettingsMismatchError, check_settings, config_digest, path_digest
from ..tiling import TilingOptions
from .builder import build_model as build_seeded_model
from .builder import load_config

__all__ = ["EvalResult", "SettingsMismatchError", "build_model", "evaluate_checkpoint"]


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


@dataclass
class EvalResult:
    """What :func:`evaluate_checkpoint` computed (``files`` only on rank 0)."""

    metrics: dict[str, float]
    threshold: float
    chosen_on: str
    val_metrics: dict[str, float] | None = None
    files: list[Path] = field(default_factory=list)
    fov_metrics: dict[str, Any] | None = None  # rank 0, with ``fov``: the report's "fov" section


def build_model(cfg: Config, checkpoint: str | Path, device: torch.device) -> Any:
    """Build ``cfg.model`` and load ``checkpoint`` (trainable ``.pth`` or exported HF folder), on ``device``.

    Through :func:`.builder.build_model`, seeded as the training runner seeds
    (the checkpoint's recorded seed, else ``cfg.randomness.seed``), so randomly initialised parts
    outside the checkpoint match the trained model's.

    Raises:
        FileNotFoundError: missing checkpoint. KeyError: checkpoint keys that do not match.
    """
    return build_seeded_model(cfg, checkpoint).to(device).eval()


def evaluate_checkpoint(
    config: str | Path | Config,
    checkpoint: str | Path,
    *,
    out_dir: str | Path,
    ann_file: str | None = None,
    image_root: str | None = None,
    val_ann_file: str | None = None,
    val_image_root: str | None = None,
    launcher: str = "none",
    batch_size: int = 1,
    num_workers: int = 0,
    max_overlays: int = 8,
    amp: bool = True,
    cfg_options: dict | None = None,
    fov: FovSource | None = None,
    skip_existing: bool = False,
    run_settings: dict[str, Any] | None = None,
    tiling: Any = None,
    flip_tta: bool = False,
) -> EvalResult:
    """Evaluate ``checkpoint`` on ``ann_file`` (default: the config's test/val set); see the module doc.

    The threshold is chosen on ``val_ann_file`` when given, else on the evaluated set itself
    (optimistic; the report says so). With ``fov`` the same predictions are also scored inside
    the field of view (:mod:`projects.sa2va.evaluation.fov`; threshold chosen inside the FOV of the
    validation set, else of the evaluated set), written to ``out_dir/fov/`` and to the ``"fov"`` section of
    ``report.json``; the whole-image figures are unchanged.

    Every sample's metric state is recorded under ``out_dir/records/`` as it is computed; with
    ``skip_existing`` the intact records of an earlier run with the same settings are reused (see
    :mod:`projects.sa2va.evaluation.evaluate`). ``run_settings``: more JSON-able settings that change
    the per-sample results (e.g. the options of a tool), stored and compared with the model config
    digest, checkpoint digest, device type and precision.

    ``tiling`` (:class:`~projects.sa2va.tiling.TilingOptions`, its dict or mode) / ``flip_tta``:
    the masks of every sample computed window by window and/or with flip TTA by
    :class:`~projects.sa2va.evaluation.tiled.TiledEvalStep` instead of ``model.val_step``.

    Raises:
        SettingsMismatchError: ``skip_existing`` and ``out_dir/records/run_settings.json`` holds other
            settings (model config, checkpoint contents, precision, tiling, flip TTA, ``run_settings``).
    """
    cfg = load_config(config, cfg_options)  # also a config copied out of the package; `path` applied
    device = init_distributed(launcher)
    rank, world = get_dist_info()
    records_dir = Path(out_dir) / RECORDS_DIR
    use_amp = amp and device.type == "cuda"
    check_settings(
        records_dir / SETTINGS_FILE,
        {
            **(run_settings or {}),
            "config": config_digest(cfg),
            "checkpoint": path_digest(checkpoint),
            "device": device.type,
            "precision": "bf16 autocast" if use_amp else "fp32",
            "tiling": dataclasses.asdict(TilingOptions.parse(tiling)),
            "flip_tta": bool(flip_tta),
        },
        skip_existing=skip_existing,
        info={"config": str(config) if not isinstance(config, Config) else cfg.filename,
              "checkpoint": str(checkpoint), "batch_size": batch_size, "world_size": world},
        write=rank == 0,
    )  # fmt: skip
    if rank == 0:  # report.json describes a finished run: the one in progress writes it at its end
        (Path(out_dir) / "report.json").unlink(missing_ok=True)
    barrier()
    model = None

    def get_model() -> Any:  # built only when a sample has to be run
        nonlocal model
        if model is None:
            model = build_model(cfg, checkpoint, device)
            _logger().info(f"evaluating on {device} (rank {rank} of {world})")
        return model

    run = dict(records_dir=records_dir, skip_existing=skip_existing, batch_size=batch_size,
               num_workers=num_workers, amp=amp)  # fmt: skip
    if flip_tta or TilingOptions.parse(tiling).mode != "off":
        run["wrap"] = lambda model, dataset: TiledEvalStep(model, dataset, tiling=tiling, flip_tta=flip_tta)
    val_metrics = None
    threshold = None
    reused: dict[str, int] = {}
    if val_ann_file is not None:
        val_set = build_eval_dataset(cfg, val_ann_file, val_image_root or image_root)
        val_metric = SegMetric(cl_dice=False, prefix="val")
        val_metrics, reused["validation"] = run_set(get_model, val_set, val_metric, split="val", **run)
        threshold = float(val_metrics["val/best_threshold"])
        chosen_on = f"validation set {val_ann_file} (mean Dice over its queries)"
        if fov is not None and is_main_process():
            val_fov = score_fov(val_metric.last_evaluator, fov, val_set.image_root, cl_dice=False)
    else:
        chosen_on = "the evaluated (test) set itself: no --val-ann-file given, so Dice at it is optimistic"

    test_set = build_eval_dataset(cfg, ann_file, image_root)
    metric = SegMetric(threshold=threshold, prefix="test")
    metrics, reused["test"] = run_set(get_model, test_set, metric, split="test", **run)
    chosen = float(metrics["test/best_threshold"])
    result = EvalResult(metrics=metrics, threshold=chosen, chosen_on=chosen_on, val_metrics=val_metrics)
    if is_main_process():
        extra = {
            "config": str(config) if not isinstance(config, Config) else cfg.filename,
            "checkpoint": str(checkpoint),
            "ann_file": test_set.ann_file,
            "validation": val_metrics,
            "oracle_on_test": {
                "threshold": metrics.get("test/oracle_threshold", chosen),
                "dice": metrics.get("test/dice_oracle", metrics["test/dice_best"]),
            },
            "duplicates_dropped": metric.last_duplicates,
            "reused": reused,  # samples whose recorded state came from an earlier run (skip_existing)
            "tiling": dataclasses.asdict(TilingOptions.parse(tiling)),  # how the masks were computed
            "flip_tta": bool(flip_tta),
        }
        result.files = write_outputs(
            metric,
            out_dir,
            image_root=test_set.image_root,
            chosen_on=chosen_on,
            extra=extra,
            max_overlays=max_overlays,
            scalars=find_scalars(checkpoint) if Path(checkpoint).is_file() else None,
        )
        if fov is not None:
            fov_result = score_fov(
                metric.last_evaluator,
                fov,
                test_set.image_root,
                threshold=val_fov.threshold if val_ann_file is not None else None,
                chosen_on=f"validation set {val_ann_file}, inside the FOV" if val_ann_file else "",
            )
            result.files += write_fov_outputs(fov_result, fov, out_dir)
            result.fov_metrics = json.loads((Path(out_dir) / "report.json").read_text())["fov"]
    return result
