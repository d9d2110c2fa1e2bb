"""Side-by-side comparison of evaluated runs: a metrics table and one figure of their training curves.

Inputs are the ``report.json`` files that :func:`~.evaluate.write_outputs` writes and the runs'
``vis_data/scalars.json``. Used by ``tools/compare_runs.py`` (the CHASE_DB1 learning run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .plots import _save, load_scalars, plt

__all__ = ["SETTING_FIELDS", "TABLE_METRICS", "differences", "format_table", "load_reports", "plot_runs"]

TABLE_METRICS = ("dice", "iou", "cl_dice")


def load_reports(reports: Mapping[str, str | Path]) -> dict[str, dict[str, Any]]:
    """``{run name: report.json contents}``; a missing or unreadable file names itself in the error."""
    out = {}
    for name, path in reports.items():
        try:
            out[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"run {name!r}: cannot read report {path}: {e}") from e
    return out


def _fmt(value: Any) -> str:
    return "  n/a " if value is None else f"{value:.4f}"


def format_table(
    reports: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """Plain-text table: one row per run, Dice / IoU / clDice at 0.5 and at the chosen threshold, then a
    ``note:`` line for each setting the runs differ in (:func:`differences`: another annotation file or
    query count means other work was scored).

    Args:
        reports: ``{run name: report.json contents}``.
        extra: optional ``{run name: {column: value}}`` appended (e.g. iterations trained).
    """
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    head = ["run"] + [f"{m}@0.5" for m in TABLE_METRICS] + ["thr"] + [f"{m}@thr" for m in TABLE_METRICS]
    head += extra_cols
    rows = [head]
    for name, rep in reports.items():
        a, b = rep["at_0.5"], rep["at_best"]
        row = [name] + [_fmt(a.get(m)) for m in TABLE_METRICS] + [f"{rep['best_threshold']:.2f}"]
        row += [_fmt(b.get(m)) for m in TABLE_METRICS]
        row += [str(extra.get(name, {}).get(c, "")) for c in extra_cols]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + differences(reports))


#: ``report.json`` fields that say what a run was scored on and how; runs that differ in one of them are
#: not scored on the same work (``ann_file``, ``n_queries``) or not the same way (the others).
SETTING_FIELDS = ("ann_file", "n_queries", "threshold_chosen_on", "tiling", "flip_tta")


def differences(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One ``note:`` line per :data:`SETTING_FIELDS` field whose value differs between the runs (a field a
    report lacks counts as ``None``), naming each run's value; none when they agree."""
    notes = []
    for field in SETTING_FIELDS:
        values = {name: rep.get(field) for name, rep in reports.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            listed = ", ".join(f"{name}={value!r}" for name, value in values.items())
            notes.append(f"note: the runs differ in {field}: {listed}")
    return notes


def plot_runs(scalars: Mapping[str, str | Path], out_png: str | Path) -> Path:
    """Training loss (``loss``, ``loss_mask + loss_dice``) and validation Dice of several runs in one figure.

    Args:
        scalars: ``{run name: vis_data/scalars.json}``.

    Raises:
        ValueError: if a file has no usable rows.
    """
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, path in scalars.items():
        rows = load_scalars(path)
        train = [r for r in rows if "loss" in r and "step" in r]
        val = [r for r in rows if "val/dice" in r and "step" in r]
        if not train and not val:
            raise ValueError(f"run {name!r}: {path} has no loss or val/dice rows")
        steps = [r["step"] for r in train]
        ax_loss.plot(
            steps, [r.get("loss_mask", 0.0) + r.get("loss_dice", 0.0) for r in train], label=f"{name} mask"
        )
        for key, style in (("val/dice", "o--"), ("val/dice_best", "o-")):
            pts = [(r["step"], r[key]) for r in val if key in r]
            if pts:
                ax_dice.plot(*zip(*pts), style, label=f"{name} {key.split('/')[-1]}")
    ax_loss.set(title="training mask loss (BCE + Dice terms)", xlabel="iteration", ylabel="loss")
    ax_dice.set(
        title="validation Dice (0.5 and best threshold)", xlabel="iteration", ylabel="Dice", ylim=(0, 1)
    )
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)
