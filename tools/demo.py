"""The CPU demo (``make demo``): fine-tune a tiny random Sa2VA on the bundled CHASE_DB1 sample.

Runs ``tools/train.py projects/sa2va/configs/sa2va_tiny_demo.py`` (the same launcher a GPU run uses),
then prints how the losses moved and where the checkpoint is. Takes about a minute on 2 cores.

    python tools/demo.py [--work-dir work_dirs/sa2va_tiny_demo] [--config ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "projects/sa2va/configs/sa2va_tiny_demo.py"


def latest_scalars(work_dir: Path) -> Path:
    """``vis_data/scalars.json`` of the newest run in ``work_dir``."""
    runs = sorted(work_dir.glob("*/vis_data/scalars.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no */vis_data/scalars.json under {work_dir}: did training log anything?")
    return runs[-1]


def shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it, else as it is."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--work-dir", default="work_dirs/sa2va_tiny_demo")
    args = ap.parse_args()
    work_dir = ROOT / args.work_dir
    cmd = [sys.executable, str(ROOT / "tools/train.py"), args.config, "--work-dir", str(work_dir)]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        print(f"demo: training failed with exit status {rc}", file=sys.stderr)
        return rc
    all_rows = read_rows(latest_scalars(work_dir))
    rows = [r for r in all_rows if "loss" in r]
    val_rows = [r for r in all_rows if "val/dice" in r]
    if len(rows) < 2:
        print("demo: fewer than 2 logged training steps; cannot show a trend", file=sys.stderr)
        return 1
    k = max(1, len(rows) // 4)
    first, last = rows[:k], rows[-k:]
    print("\nloss (mean of the first and last quarter of logged steps)")
    print(f"{'term':<12}{'first':>10}{'last':>10}")
    for key in ("loss", "loss_lm", "loss_mask", "loss_dice"):
        print(f"{key:<12}{mean(first, key):>10.4f}{mean(last, key):>10.4f}")
    if val_rows:
        print("\nvalidation on data/chase_db1/annotations_test.json (8 images)")
        print(f"{'step':>6}{'Dice@0.5':>10}{'Dice@best':>11}{'threshold':>11}")
        for r in val_rows:
            print(
                f"{r['step']:>6}{r['val/dice']:>10.4f}{r['val/dice_best']:>11.4f}{r['val/best_threshold']:>11.2f}"
            )
        print(
            "(a random tiny model with a frozen random SAM2 encoder cannot learn thin vessels in a minute\n"
            " on a CPU; bench/records/README.md shows a real learning run: test Dice 0.75 at full resolution)"
        )
    ckpts = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    if not ckpts:
        print(f"demo: no checkpoint written in {work_dir}", file=sys.stderr)
        return 1
    print(f"\ncheckpoint (trainable tensors only): {shown(ckpts[-1])}")
    if mean(last, "loss") >= mean(first, "loss"):
        print("demo: the loss did not fall", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
