"""The pieces of checkpoint evaluation: datasets, metric runs kept as they come, report and plots.

:func:`projects.sa2va.engine.evaluate_checkpoint.evaluate_checkpoint` (behind ``tools/test.py``) builds the
model and runs these on a validation and a test set; nothing here builds a model (a run takes a
``get_model`` callable).

Results are kept as they come (:mod:`projects.sa2va.run_records`): after every batch each
sample's metric state (confusion counts over the threshold grid and its compressed bin map, exactly
what the final figures are computed from) goes to ``records/{test,val}/<image stem>-<key digest>.npz``
and a line with its Dice / IoU / precision / recall at 0.5 to ``records/{test,val}.jsonl``;
``records/run_settings.json`` holds the model config digest, checkpoint digest and precision. With
``skip_existing`` the samples whose record is intact (state file present with its recorded SHA-256,
annotation record and image bytes unchanged) are not run again, and the report covers every sample
(``report.json`` ``"reused"`` says how many came from the earlier run): the figures equal those of a
run from scratch. Other settings than the stored ones are refused (:class:`SettingsMismatchError`).
A progress bar (count, rate, ETA) goes to stderr on rank 0.

Evaluation is teacher-forced (``Sa2VAModel(mode='predict')``): the ``[SEG]`` answers are part of
the input, one per object, objects in record order, first question/answer wording.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.dist import barrier, get_dist_info, is_main_process
from mmengine.logging import MMLogger
from PIL import Image
from torch.utils.data import DataLoader, Subset

from ..datasets.collate import sa2va_collate
from ..datasets.image_io import read_image_array
from ..models.builder import build_component
from ..run_records import (
    RunRecords,
    SettingsMismatchError,
    bytes_digest,
    file_digest,
    progress_bar,
    write_atomic,
)
from .metrics import SegEvaluator, write_report
from .plots import ERROR_COLORS, error_map, overlay, overlay_grid, plot_curves, plot_pr_curve
from .seg_metric import SegMetric, query_key

__all__ = [
    "RECORDS_DIR",
    "SETTINGS_FILE",
    "SettingsMismatchError",
    "build_eval_dataset",
    "build_eval_loader",
    "find_scalars",
    "init_distributed",
    "load_state",
    "run_metric",
    "run_set",
    "sample_inputs",
    "save_state",
    "write_outputs",
]

THRESHOLD_FILE = "best_threshold.json"
RECORDS_DIR = "records"
SETTINGS_FILE = "run_settings.json"
_EVAL_OVERRIDES = dict(objects_per_image=None, random_templates=False, augment=None, repeats=1)


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


def init_distributed(launcher: str) -> torch.device:
    """Start the process group for ``launcher='pytorch'`` (torchrun env vars) and pick the device.

    NCCL with one GPU per ``LOCAL_RANK`` when CUDA is available, else gloo on the CPU (mmengine's
    ``init_dist`` would call ``torch.cuda.set_device`` unconditionally). ``'none'``: no group.
    """
    if launcher not in ("none", "pytorch"):
        raise ValueError(f"launcher must be 'none' or 'pytorch', got {launcher!r}")
    cuda = torch.cuda.is_available()
    if launcher == "pytorch" and not dist.is_initialized():
        if "LOCAL_RANK" not in os.environ:
            raise RuntimeError("--launcher pytorch needs torchrun's environment (LOCAL_RANK is not set)")
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _dataset_cfg(cfg: Config) -> dict:
    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        section = cfg.get(loader)
        if section and section.get("dataset"):
            return dict(copy.deepcopy(section["dataset"]))
    raise KeyError("config has no test_dataloader / val_dataloader / train_dataloader dataset to copy")


def build_eval_dataset(cfg: Config, ann_file: str | None = None, image_root: str | None = None) -> Any:
    """The config's test (else val, else train) dataset, set up for evaluation.

    Every object of a record, in order, first wording, no augmentation, no repeats. ``ann_file`` /
    ``image_root`` replace the config's (``image_root`` defaults to the config's).
    """
    ds = _dataset_cfg(cfg)
    if ann_file is not None:
        ds["ann_file"] = str(ann_file)
    if image_root is not None:
        ds["image_root"] = str(image_root)
    ds.update(_EVAL_OVERRIDES)
    return build_component(ds)


def build_eval_loader(dataset: Any, batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """Sequential sharded loader: rank ``r`` of ``w`` gets samples ``r, r + w, ...``, the last batch
    padded with repeats so every rank runs the same number of steps (repeats are dropped by key)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=DefaultSampler(dataset, shuffle=False, round_up=True),
        num_workers=num_workers,
        collate_fn=sa2va_collate,
        persistent_workers=False,
    )


@torch.no_grad()
def _process(
    model: Any,
    loader: Iterable,
    metric: SegMetric,
    amp: bool,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    bar: Any = None,
) -> None:
    """``model.val_step`` (teacher-forced ``predict``) over ``loader`` into ``metric``; after each batch
    ``on_batch`` gets the metric results it added (``{"image_id", "state"}`` per sample)."""
    use_amp = amp and torch.cuda.is_available()
    for batch in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            outputs = model.val_step(batch)
        before = len(metric.results)
        metric.process(batch, outputs)
        if on_batch is not None:
            on_batch(metric.results[before:])
        if bar is not None:
            bar.update(len(outputs))


def run_metric(
    model: Any, loader: Iterable, metric: SegMetric, size: int, amp: bool = True, desc: str = "evaluate"
) -> dict:
    """Run ``model.val_step`` (teacher-forced ``predict``) over ``loader`` into ``metric``.

    Args:
        size: samples in the dataset (the metric checks the de-duplicated count against it).
        amp: bf16 autocast on CUDA.
        desc: label of the progress bar (stderr, rank 0).

    Returns:
        The metric's dict (identical on every rank).
    """
    with progress_bar(size, desc=desc, unit="sample", enabled=is_main_process()) as bar:
        _process(model, loader, metric, amp, bar=bar)
    return metric.evaluate(size)


# -- per-sample records (written as they come, reused by skip_existing) -----------------------------
def sample_inputs(dataset: Any) -> dict[str, str]:
    """``{sample key: input digest}`` of an evaluation dataset, in dataset order.

    The sample key is the sample's query keys (``image|object index|text``, every object in record
    order, as :class:`SegMetric` names them) joined by newlines; the input digest covers the record
    (texts and masks) and the image file's bytes.

    Raises:
        TypeError: the dataset has no ``records`` (a :class:`RefSegDataset`-style list of
            ``{"image", "text", "mask"}``).
    """
    out: dict[str, str] = {}
    for rec, key in zip(dataset.records, _record_keys(dataset)):
        image = str(rec["image"])
        record_digest = bytes_digest(json.dumps(rec, sort_keys=True, default=str).encode())
        out[key] = bytes_digest(f"{record_digest}|{file_digest(Path(dataset.image_root) / image)}".encode())
    return out


def _record_keys(dataset: Any) -> list[str]:
    """The sample key of every annotation record of ``dataset`` (see :func:`sample_inputs`)."""
    records = getattr(dataset, "records", None)
    if records is None:
        raise TypeError(f"{type(dataset).__name__} has no `records`: cannot key its samples for reuse")
    return [
        "\n".join(query_key(str(r["image"]), j, str(t)) for j, t in enumerate(r["text"])) for r in records
    ]


def save_state(state: dict[str, Any], path: str | Path) -> str:
    """Write one sample's :meth:`SegEvaluator.state_dict` as ``.npz`` (atomically, no pickle); returns
    its SHA-256."""
    n, k = len(state["keys"]), len(state["thresholds"])
    arrays = {
        "thresholds": np.asarray(state["thresholds"], np.float64),
        "keys": np.asarray(state["keys"], dtype=str),
        "tp": np.asarray(state["tp"], np.int64).reshape(n, k),
        "fp": np.asarray(state["fp"], np.int64).reshape(n, k),
        "n_gt": np.asarray(state["n_gt"], np.int64),
        "n_pix": np.asarray(state["n_pix"], np.int64),
        "shapes": np.asarray(state["shapes"], np.int64).reshape(n, 2),
    }
    for j in range(n):
        arrays[f"bins_{j}"] = np.frombuffer(state["bins"][j], np.uint8)
        arrays[f"gt_{j}"] = np.frombuffer(state["gt"][j], np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_atomic(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a :func:`save_state` file back into a :meth:`SegEvaluator.state_dict` (equal to the saved one)."""
    with np.load(path, allow_pickle=False) as z:
        n = len(z["keys"])
        return {
            "thresholds": z["thresholds"].copy(),
            "keys": [str(x) for x in z["keys"]],
            "tp": [row.copy() for row in z["tp"]],
            "fp": [row.copy() for row in z["fp"]],
            "n_gt": [int(x) for x in z["n_gt"]],
            "n_pix": [int(x) for x in z["n_pix"]],
            "shapes": [(int(h), int(w)) for h, w in z["shapes"]],
            "bins": [z[f"bins_{j}"].tobytes() for j in range(n)],
            "gt": [z[f"gt_{j}"].tobytes() for j in range(n)],
        }


def _state_name(split: str, image_id: str, key: str) -> str:
    return f"{split}/{Path(image_id).stem}-{bytes_digest(key.encode())[:12]}.npz"


def _metrics_at_05(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-query Dice / IoU / precision / recall at 0.5 of one sample (the line of ``records/*.jsonl``)."""
    rows = SegEvaluator.from_state_dict(state).summary(0.5, cl_dice=False)["per_query"]
    return [{k: v for k, v in row.items() if k != "cl_dice"} for row in rows]


def run_set(
    get_model: Callable[[], Any],
    dataset: Any,
    metric: SegMetric,
    *,
    split: str,
    records_dir: Path,
    skip_existing: bool,
    batch_size: int,
    num_workers: int,
    amp: bool,
    wrap: Callable[[Any, Any], Any] | None = None,
) -> tuple[dict, int]:
    """Evaluate ``dataset`` into ``metric`` with the model ``get_model()`` returns (called only when a
    sample has to be run), each sample's state recorded under ``records_dir/split`` as it comes; with
    ``skip_existing`` the intact recorded samples are reused instead of run. ``wrap(model, dataset)``:
    a stand-in whose ``val_step`` is run instead of the model's (tiled / flip-TTA evaluation).

    Returns:
        ``(metric dict, samples reused)``.
    """
    rank, _ = get_dist_info()
    inputs = sample_inputs(dataset)
    if rank == 0 and not skip_existing:  # a fresh run: no state file of an earlier run stays
        shutil.rmtree(records_dir / split, ignore_errors=True)
    records = RunRecords(records_dir, split, fresh=not skip_existing, rank=rank)
    barrier()  # rank 0 removed the old record files before any rank appends
    reused = records.reusable(inputs) if skip_existing else {}
    barrier()  # every rank read them before any rank appends
    per_record = _record_keys(dataset)
    todo = [i for i in range(len(dataset)) if per_record[i % len(per_record)] not in reused]

    def on_batch(results: list[dict[str, Any]]) -> None:
        for res in results:
            state = res["state"]
            key = "\n".join(state["keys"])
            if key not in inputs:
                raise RuntimeError(f"{split}: sample {res['image_id']!r} has keys {state['keys']} "
                                   "that no annotation record names")  # fmt: skip
            name = _state_name(split, res["image_id"], key)
            digest = save_state(state, records_dir / name)
            record = {"image": res["image_id"], "state": name, "at_0.5": _metrics_at_05(state)}
            records.append(key, inputs[key], record, {name: digest})

    n_reused = len(dataset) - len(todo)
    with progress_bar(len(dataset), desc=split, initial=n_reused, unit="sample",
                      enabled=is_main_process()) as bar:  # fmt: skip
        if todo:
            loader = build_eval_loader(Subset(dataset, todo), batch_size, num_workers)
            model = get_model() if wrap is None else wrap(get_model(), dataset)
            _process(model, loader, metric, amp, on_batch, bar)
    if is_main_process():  # the metric gathers every rank's results on rank 0
        for record in reused.values():
            metric.results.append(
                {"image_id": record["image"], "state": load_state(records_dir / record["state"])}
            )
    if n_reused:
        _logger().info(f"{split}: {n_reused} of {len(dataset)} samples reused from {records.folder}")
    return metric.evaluate(len(dataset)), n_reused


def find_scalars(checkpoint: str | Path) -> Path | None:
    """The newest ``*/vis_data/scalars.json`` next to a checkpoint (its work dir), if any."""
    work_dir = Path(checkpoint).resolve().parent
    found = sorted(work_dir.glob("*/vis_data/scalars.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _json_clean(value: Any) -> Any:
    """NaN/inf -> None (valid JSON), numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _split_key(key: str) -> tuple[str, int, str]:
    image_id, index, text = key.split("|", 2)
    return image_id, int(index), text


def write_outputs(
    metric: SegMetric,
    out_dir: str | Path,
    *,
    image_root: str | Path,
    chosen_on: str,
    extra: dict[str, Any] | None = None,
    max_overlays: int = 8,
    scalars: str | Path | None = None,
) -> list[Path]:
    """Write the report, threshold file and plots of an evaluated :class:`SegMetric` (rank 0).

    Args:
        metric: after :meth:`SegMetric.evaluate` (holds the merged evaluator and summaries).
        image_root: folder of the images (query keys start with the image path relative to it).
        chosen_on: where the threshold was chosen (written to ``best_threshold.json`` and the report).
        extra: more fields for ``report.json``.
        max_overlays: per-query overlay PNGs written (worst Dice first); the grid shows up to 4.
        scalars: a ``vis_data/scalars.json`` to plot training curves from.

    Returns:
        The written files.
    """
    ev = metric.last_evaluator
    if ev is None or not metric.last_summaries:
        raise ValueError("write_outputs needs an evaluated SegMetric (call evaluate() first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    at_05, at_best = metric.last_summaries["at_0.5"], metric.last_summaries["at_best"]
    t = float(at_best["threshold"])
    report_path, csv_path = write_report(at_05, at_best, t, out)
    report = json.loads(report_path.read_text())
    report["threshold_chosen_on"] = chosen_on
    report.update(extra or {})
    report_path.write_text(json.dumps(_json_clean(report), indent=2) + "\n")
    thr_path = out / THRESHOLD_FILE
    thr_path.write_text(
        json.dumps(
            {
                "threshold": round(t, 6),
                "chosen_on": chosen_on,
                "metric": metric.threshold_metric,
                "test_dice_at_threshold": at_best["overall"]["dice"],
            },
            indent=2,
        )
        + "\n"
    )
    files = [report_path, csv_path, thr_path, plot_pr_curve(ev, t, out / "pr_curve.png")]

    dice_at_t = [row["dice"] for row in at_best["per_query"]]
    order = [int(i) for i in np.argsort(dice_at_t, kind="stable")]  # worst first
    grid_idx = order if len(order) <= 4 else order[:2] + order[-2:]
    rows, images = [], {}
    for i in dict.fromkeys(grid_idx + order[:max_overlays]):
        image_id, j, text = _split_key(ev.keys[i])
        if image_id not in images:
            images[image_id] = read_image_array(Path(image_root) / image_id)  # as training read it
        pred, gt = ev.masks(i, t)
        if images[image_id].shape[:2] != gt.shape:
            raise ValueError(
                f"{image_id}: image {images[image_id].shape[:2]} differs from its mask {gt.shape}"
            )
        title = f"{Path(image_id).name} '{text}' Dice {dice_at_t[i]:.3f} @ {t:.2f}"
        if i in grid_idx:
            rows.append((images[image_id], gt, pred, title))
        if i in order[:max_overlays]:
            panel = np.concatenate(
                [overlay(images[image_id], pred, (255, 255, 0), 0.6), error_map(gt, pred)], 1
            )
            path = out / "overlays" / f"{Path(image_id).stem}_{j}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(panel).save(path)
            files.append(path)
    files.append(overlay_grid(rows, out / "overlay_grid.png"))
    if scalars is not None:
        try:
            files.append(plot_curves(scalars, out / "training_curves.png"))
        except ValueError as e:
            _logger().warning(f"no training curves from {scalars}: {e}")
    _logger().info(
        f"wrote {len(files)} files to {out} (overlays: prediction yellow; errors "
        f"{', '.join(f'{k} {v}' for k, v in ERROR_COLORS.items())})"
    )
    return files
