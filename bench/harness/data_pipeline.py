"""Cost of the training data pipeline per sample, on the host: what a DataLoader worker spends and ships.

For each pixel format of :class:`~projects.sa2va.datasets.refseg.RefSegDataset` (``'uint8'``: pixels
normalised later on the device; ``'float32'``: normalised in the worker) it measures, on one thread
(a DataLoader worker runs one):

* ``getitem ms``: ``dataset[i]`` (image decode, masks, tiling, resizes, tokens);
* ``collate ms``: :func:`~projects.sa2va.datasets.collate.sa2va_collate` of one batch, per sample;
* ``digests ms``: the extra cost of the feature-cache digests computed in the workers, per sample;
* ``MB / sample``: the pickled collated batch per sample, i.e. what crosses from a worker to the
  training process (shared memory), then to pinned memory and to the device.
"""

from __future__ import annotations

import copy
import pickle
import time
from dataclasses import dataclass
from typing import Any

import torch

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.models.builder import build_component


@dataclass
class PipelineCost:
    """Per-sample costs of one pixel format (see the module docstring)."""

    pixel_format: str
    getitem_ms: float
    collate_ms: float
    digests_ms: float
    mb_per_sample: float


def measure(dataset_cfg: Any, *, pixel_format: str, samples: int, batch_size: int) -> PipelineCost:
    """Build the dataset of ``dataset_cfg`` with ``pixel_format`` and time ``samples`` items."""
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples}, {batch_size}")
    cfg = copy.deepcopy(dataset_cfg)
    cfg["pixel_format"] = pixel_format
    dataset = build_component(cfg)
    n = min(samples, len(dataset))
    dataset[0]  # warm caches (image sizes, tokenizer)
    t = time.perf_counter()
    items = [dataset[i % len(dataset)] for i in range(n)]
    getitem = (time.perf_counter() - t) / n
    batches = [items[i : i + batch_size] for i in range(0, n, batch_size)]
    t = time.perf_counter()
    plain = [sa2va_collate(b) for b in batches]
    collate = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for b in batches:
        sa2va_collate(b, digests=True)
    digests = (time.perf_counter() - t) / n - collate
    size = sum(len(pickle.dumps(p)) for p in plain) / n
    return PipelineCost(pixel_format, getitem * 1e3, collate * 1e3, max(digests, 0.0) * 1e3, size / 1e6)


def run(dataset_cfg: Any, *, samples: int = 32, batch_size: int = 16) -> list[PipelineCost]:
    """Both pixel formats, on one thread (as in a DataLoader worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [
            measure(dataset_cfg, pixel_format=f, samples=samples, batch_size=batch_size)
            for f in ("float32", "uint8")
        ]
    finally:
        torch.set_num_threads(threads)


def format_table(rows: list[PipelineCost], note: Any = "") -> str:
    lines = [
        "| pixel format | getitem ms | collate ms | digests ms | worker ms total | MB / sample |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r.getitem_ms + r.collate_ms + r.digests_ms
        cells = (r.getitem_ms, r.collate_ms, r.digests_ms, total)
        row = " | ".join(f"{c:.1f}" for c in cells)
        lines.append(f"| {r.pixel_format} | {row} | {r.mb_per_sample:.2f} |")
    return "\n".join(lines) + (f"\n\n{note}" if note else "")
