"""Plot training losses and validation Dice of a work dir (mmengine ``vis_data/scalars.json``).

    python tools/plot_logs.py WORK_DIR [--out WORK_DIR/training_curves.png]

WORK_DIR is a training work dir (the newest ``*/vis_data/scalars.json`` inside it is used) or a
``scalars.json`` file. See projects/sa2va/evaluation/plots.py (plot_curves).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.evaluation.plots import plot_curves  # noqa: E402


def find_scalars(path: Path) -> Path:
    """``path`` itself if it is a file, else the newest ``*/vis_data/scalars.json`` (or ``vis_data/...``)."""
    if path.is_file():
        return path
    found = list(path.glob("*/vis_data/scalars.json")) + list(path.glob("vis_data/scalars.json"))
    if not found:
        raise SystemExit(f"plot_logs.py: no vis_data/scalars.json under {path}")
    return max(found, key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work_dir", type=Path, help="training work dir or a scalars.json")
    parser.add_argument("--out", type=Path, help="output PNG (default: WORK_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    if not args.work_dir.exists():
        raise SystemExit(f"plot_logs.py: {args.work_dir} not found")
    scalars = find_scalars(args.work_dir)
    default_dir = args.work_dir if args.work_dir.is_dir() else args.work_dir.parent
    out = plot_curves(scalars, args.out or default_dir / "training_curves.png")
    sys.stdout.write(f"{scalars} -> {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
