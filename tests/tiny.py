"""Test helpers: the tiny random Sa2VA of ``_base_/model_tiny.py`` and datasets over the bundled data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from projects.sa2va.configs import config_path

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_CFG = config_path("_base_/model_tiny")
DATA_ROOT = ROOT / "data/chase_db1"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def annotation_subset(src: Path, names: list[str], dst: Path) -> str:
    """Write the records of ``src`` (an annotations JSON) whose image is in ``names`` to ``dst``; its path."""
    records = [r for r in json.loads(Path(src).read_text()) if r["image"] in names]
    assert len(records) == len(names), (src, names)
    Path(dst).write_text(json.dumps(records))
    return str(dst)


def tiny_demo_run_cfg(
    work_dir: Path, train_images: list[str], max_iters: int, val_images: list[str] | None = None
):
    """The tiny demo config (``sa2va_tiny_demo.py``) training ``max_iters`` iterations at batch 1 on the
    bundled train ``train_images`` (one object each; their subset written next to ``work_dir``), without
    checkpoints, and validating on the bundled test ``val_images`` (validation off when ``None``)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"))
    cfg.work_dir = str(work_dir)
    train = annotation_subset(DATA_ROOT / "annotations_train.json", train_images, f"{work_dir}_train.json")
    cfg.train_dataloader.batch_size = 1
    cfg.train_dataloader.dataset.update(ann_file=train, objects_per_image=1)
    cfg.train_cfg.pop("max_epochs")
    cfg.train_cfg.update(max_iters=max_iters)
    cfg.default_hooks.checkpoint.update(interval=100 * max_iters)
    if val_images is None:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    else:
        val = annotation_subset(DATA_ROOT / "annotations_test.json", val_images, f"{work_dir}_val.json")
        cfg.val_dataloader.dataset.ann_file = val
    return cfg


def slow_samples(monkeypatch, seconds: float) -> None:
    """Every ``RefSegDataset`` sample takes ``seconds`` longer (forked loader workers inherit the patch)."""
    import time

    from projects.sa2va.datasets.refseg import RefSegDataset

    real = RefSegDataset.__getitem__

    def slow(self, index):
        time.sleep(seconds)
        return real(self, index)

    monkeypatch.setattr(RefSegDataset, "__getitem__", slow)


def build_tiny_model(seed: int = 0, **model_overrides):
    """A tiny random Sa2VAModel (fixed seed) built through the config, as training builds it."""
    from mmengine.config import Config
    from xtuner.registry import BUILDER

    cfg = Config.fromfile(str(TINY_MODEL_CFG))
    cfg.model.update(model_overrides)
    torch.manual_seed(seed)
    return BUILDER.build(cfg.model), cfg


def tiny_processor(cfg, image_processor: dict | None = None, **changes) -> dict:
    """A copy of the config's ``processor`` dict with ``image_processor`` fields and processor fields changed
    (e.g. ``tiny_processor(cfg, dict(max_tiles=12), sam2_resample="bilinear")``)."""
    import copy

    proc = copy.deepcopy(cfg.processor)
    proc.image_processor.update(image_processor or {})
    for key, value in changes.items():  # replaced, not merged (a template dict is a whole template)
        proc[key] = value
    return proc


def build_tiny_dataset(cfg, ann: str = "annotations_train.json", **overrides):
    """RefSegDataset over the bundled CHASE_DB1 sample with the config's processor (the tiny model's: one
    224-px tile per 512x512 image, as the real 448-px ViT gets one tile, and the 256-px SAM2 input)."""
    from projects.sa2va.datasets.refseg import RefSegDataset

    kwargs = dict(
        ann_file=str(DATA_ROOT / ann), image_root=str(DATA_ROOT / "images"), processor=cfg.processor
    )
    kwargs.update(overrides)
    return RefSegDataset(**kwargs)


def adamw_steps(model, dataset, batches: list[list[int]], lr: float = 1e-3) -> tuple[list, list[float]]:
    """One AdamW step (training mode) per batch of dataset indices, as the runner's loop does it.

    Returns:
        the preprocessed batches (``Sa2VABatch``: for their padded lengths, object counts, ...) and the
        total loss of each step.
    """
    from projects.sa2va.datasets.collate import sa2va_collate

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    done, losses = [], []
    model.train()
    for idx in batches:
        batch = model.data_preprocessor(sa2va_collate([dataset[i] for i in idx]))["data"]
        loss = sum(model(batch, mode="loss").values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        done.append(batch)
        losses.append(float(loss.detach()))
    return done, losses
