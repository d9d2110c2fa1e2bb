"""Split an annotation file into train.json / val.json, grouped by image, deterministically.

    python tools/split_dataset.py data/x/annotations.json --val-fraction 0.2 --seed 0 --out-dir data/x

Image paths stay relative to the original image folder. Exit status 1 if the file is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.sa2va.datasets.annotations import AnnotationError, load_annotations
from projects.sa2va.datasets.split import split_records, write_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ann_file", type=Path)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of images for val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--images", type=Path, help="image folder: also check that every image is readable")
    args = parser.parse_args(argv)

    try:
        records = load_annotations(
            args.ann_file, args.images or args.ann_file.parent, check_images=args.images is not None
        )
        train, val = split_records(records, args.val_fraction, args.seed)
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    train_path, val_path = write_split(train, val, args.out_dir)
    for name, path, part in (("train", train_path, train), ("val", val_path, val)):
        n_images = len({r["image"] for r in part})
        print(f"{name}: {len(part)} records, {n_images} images -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
