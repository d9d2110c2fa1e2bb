"""Print the resolution ceiling (Dice of a perfect prediction) of each mask-resolution mode.

Usage:
    .venv/bin/python tools/resolution_ceiling.py data/chase_db1/annotations.json \
        --images data/chase_db1/images [--low-res 256] [--tile-window 1024] [--tile-overlap 0.25]

See projects/sa2va/evaluation/resolution.py for the modes. The tiled_* rows model tiled prediction
(tools/predict.py --tile): each window of --tile-window px through its own low-res grid, windows blended.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations
from projects.sa2va.evaluation.resolution import CEILING_MODES, DEFAULT_WINDOW, summarize_ceilings
from projects.sa2va.tiling import DEFAULT_OVERLAP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ann_file", type=Path, help="annotations.json (list of image/text/mask records)")
    parser.add_argument("--images", type=Path, required=True, help="image folder the records refer to")
    parser.add_argument("--low-res", type=int, default=256, help="side of the low-res mask grid (SAM2: 256)")
    parser.add_argument("--modes", nargs="+", default=list(CEILING_MODES), choices=CEILING_MODES)
    parser.add_argument(
        "--tile-window",
        type=int,
        default=DEFAULT_WINDOW,
        help="window side of the tiled_* modes in px (the model's SAM2 input size: 1024)",
    )
    parser.add_argument(
        "--tile-overlap", type=float, default=DEFAULT_OVERLAP, help="overlap fraction of neighbouring windows"
    )
    args = parser.parse_args(argv)
    if args.tile_window < 1:
        parser.error(f"--tile-window must be a positive integer, got {args.tile_window}")
    if not 0.0 <= args.tile_overlap < 1.0:
        parser.error(f"--tile-overlap must be in [0, 1), got {args.tile_overlap}")
    return args


def iter_object_masks(ann_file: Path, image_root: Path) -> Iterator[np.ndarray]:
    """Yield every object's ``[H, W]`` bool mask, at its image's size."""
    for record in load_annotations(ann_file, image_root, check_images=True):
        with Image.open(image_root / record["image"]) as image:
            width, height = image.size
        yield from decode_record_masks(record, height, width)


def format_table(
    stats: dict[str, dict[str, float | int]],
    low_res: int,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
) -> str:
    lines = [
        f"{'mode':<14} {'mean Dice':>9} {'min':>7} {'max':>7} {'objects':>8}   (low_res={low_res}, "
        f"tiled: window={window} overlap={overlap})"
    ]
    for mode, s in stats.items():
        lines.append(f"{mode:<14} {s['mean']:>9.4f} {s['min']:>7.4f} {s['max']:>7.4f} {s['n']:>8d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stats = summarize_ceilings(
        iter_object_masks(args.ann_file, args.images),
        args.modes,
        args.low_res,
        window=args.tile_window,
        overlap=args.tile_overlap,
    )
    print(format_table(stats, args.low_res, args.tile_window, args.tile_overlap))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
