"""Test helper: LossRecorderHook-style records files (``train_losses*.jsonl``) for the report scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_loss_records(
    file: Path, losses: Sequence[float], times: Sequence[float], **fields: Sequence[float]
) -> None:
    """One record per iteration i (from 1): losses[i-1], end time times[i-1] and each field's [i-1]."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", encoding="utf-8") as f:
        for i, (loss, t) in enumerate(zip(losses, times, strict=True), 1):
            rec = {"iter": i, "loss": loss, "time": t, **{k: v[i - 1] for k, v in fields.items()}}
            f.write(json.dumps(rec) + "\n")
