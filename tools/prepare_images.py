"""Resize images and their masks to a training size, into a NEW folder, with a round-trip report.

    python tools/prepare_images.py --images data/x/images --masks data/x/vessels --masks data/x/fov \
        --size 512 --out data/x_512
    # exact size, only some masks, JPEG quality (the bundled CHASE_DB1 sample: data/chase_db1/SOURCE.md)
    python tools/prepare_images.py --images SRC/images --masks SRC/masks --mask-glob "*_1stHO.png" \
        --size 512x512 --jpeg-quality 90 --out /tmp/chase_512

--size N makes the longer side N (aspect ratio kept); --size WxH gives an exact size. Images: area
interpolation when shrinking (bilinear when enlarging), same file name and format. Masks: area
interpolation of the 0/1 mask, then >= 0.5, written 0/255 (PNG: 1-bit) under the same name. Each input
folder becomes OUT/<folder name>; OUT must be new (or empty) and outside the inputs: nothing is resized in
place. Then convert the new folders with tools/masks_to_annotations.py. Instance-ID masks (--id-masks DIR,
pixel value = object id): per new pixel the id with the largest area share, written 8/16-bit, round trip
the mean over ids; an id the new size loses is an error.

Report (OUT/prepare_report.csv and .json): per file its size before/after; per mask the foreground
fraction before/after and the Dice of the resized mask enlarged back (bilinear, >= 0.5) vs the original.
Exit status 1 on bad folders or unreadable files (the message names them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.sa2va.datasets.prepare import (
    PrepareError,
    parse_size,
    prepare_folders,
    summarize,
    write_report,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--masks", type=Path, action="append", default=[], help="mask folder (repeatable)")
    parser.add_argument(
        "--id-masks",
        type=Path,
        action="append",
        default=[],
        help="folder of instance-ID masks (pixel value = id), resized per id (repeatable)",
    )
    parser.add_argument(
        "--mask-glob", action="append", default=[], help="only mask files matching (repeatable)"
    )
    parser.add_argument("--size", required=True, help="N (longer side) or WxH")
    parser.add_argument("--out", type=Path, required=True, help="new output folder")
    parser.add_argument(
        "--jpeg-quality", type=int, default=95, help="quality of JPEG images written (default 95)"
    )
    parser.add_argument(
        "--mask-threshold", type=int, default=127, help="mask pixels > threshold (0..255) are foreground"
    )
    parser.add_argument("--summary-only", action="store_true", help="print only the summary, not every mask")
    args = parser.parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg-quality {args.jpeg_quality}: must be 1..100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        size = parse_size(args.size)
        reports = prepare_folders(
            args.images,
            args.out,
            size,
            masks_dirs=args.masks,
            mask_globs=args.mask_glob,
            mask_threshold=args.mask_threshold,
            jpeg_quality=args.jpeg_quality,
            id_masks_dirs=args.id_masks,
        )
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    csv_path, _ = write_report(reports, args.out, size)
    for r in reports:
        if r.kind in ("mask", "id_mask") and not args.summary_only:
            print(
                f"{r.source}: {r.width_before}x{r.height_before} -> {r.width_after}x{r.height_after}, "
                f"foreground {100 * r.fg_before:.2f} % -> {100 * r.fg_after:.2f} %, "
                f"round-trip Dice {r.dice_round_trip:.4f}"
            )
    s = summarize(reports)
    sizes = sorted({(r.width_after, r.height_after) for r in reports if r.kind == "image"})
    print(f"images: {s['images']} -> {', '.join(f'{w}x{h}' for w, h in sizes[:5])}")
    if s["masks"]:
        print(
            f"masks: {s['masks']}, round-trip Dice mean {s['dice_round_trip_mean']:.4f} min "
            f"{s['dice_round_trip_min']:.4f} ({s['worst_mask']}), "
            f"foreground {100 * s['fg_before_mean']:.2f} % -> "
            f"{100 * s['fg_after_mean']:.2f} %"
        )
    print(f"wrote {args.out} (report {csv_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
