r"""Split an annotation file into train / val (or test) files, grouped by image, deterministically.

    # at random: a fraction of the images, seeded
    python tools/split_dataset.py data/x/annotations.json --val-fraction 0.2 --seed 0 --out-dir data/x
    # keep a fixed (official) split: name the held-out images by a list, a glob or a folder
    python tools/split_dataset.py data/x/annotations.json --val-list data/x/test.txt \
        --train-name train.json --val-name test.json --out-dir data/x
    python tools/split_dataset.py A.json --val-glob "Image_1[1-4]*" --out-dir D
    python tools/split_dataset.py A.json --val-folder DRIVE/test/images --train-folder DRIVE/training/images \
        --val-name test.json --out-dir D
    # keep one patient's images together (Image_09L / Image_09R) in a random split
    python tools/split_dataset.py A.json --val-fraction 0.2 --group-regex "Image_(\d+)[LR]" --out-dir D

Lists are text files with one image per line (its path as in the annotations, its file name, or its
file name without extension; blank lines and # comments skipped). Globs match the image path or its
file name. Folders name their image files. Without --train-*, every image not named for val goes to
train; with them, every image must be named exactly once. --group-regex: the first capture group (else
the whole match) is the group; a random split then draws whole groups (--val-fraction is a fraction of
the groups), and a named split that puts one group on both sides is refused.

Image paths stay relative to the original image folder. Exit status 1 on an invalid file, an unknown
image (all of them named) or an impossible split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.sa2va.datasets.annotations import AnnotationError, load_annotations
from projects.sa2va.datasets.split import (
    image_groups,
    image_key,
    select_images,
    split_by_selection,
    split_records,
    write_split,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ann_file", type=Path)
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="random split: fraction of images (or groups) for val (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random split: shuffle seed")
    for side in ("val", "train"):
        parser.add_argument(
            f"--{side}-list", action="append", default=[], type=Path, help=f"text file of {side} image names"
        )
        parser.add_argument(f"--{side}-glob", action="append", default=[], help=f"glob of {side} image names")
        parser.add_argument(
            f"--{side}-folder", action="append", default=[], type=Path, help=f"folder of the {side} images"
        )
    parser.add_argument(
        "--group-regex", help="images with the same group (first capture group) stay together"
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--train-name", default="train.json", help="file name of the train side")
    parser.add_argument("--val-name", default="val.json", help="file name of the val side (e.g. test.json)")
    parser.add_argument("--images", type=Path, help="image folder: also check that every image is readable")
    args = parser.parse_args(argv)
    args.named = bool(args.val_list or args.val_glob or args.val_folder)
    train_named = bool(args.train_list or args.train_glob or args.train_folder)
    if args.named and args.val_fraction is not None:
        parser.error("--val-fraction is for a random split: drop it when naming the val images")
    if train_named and not args.named:
        parser.error("--train-list/--train-glob/--train-folder need the val side named too (--val-*)")
    if args.train_name == args.val_name:
        parser.error(f"--train-name and --val-name are both {args.train_name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = load_annotations(
            args.ann_file, args.images or args.ann_file.parent, check_images=args.images is not None
        )
        if args.named:
            images = {image_key(r) for r in records}
            val_images = select_images(
                images, lists=args.val_list, globs=args.val_glob, folders=args.val_folder
            )
            train_images = None
            if args.train_list or args.train_glob or args.train_folder:
                train_images = select_images(
                    images, lists=args.train_list, globs=args.train_glob, folders=args.train_folder
                )
            train, val = split_by_selection(
                records, val_images, train_images=train_images, group_regex=args.group_regex
            )
        else:
            fraction = 0.2 if args.val_fraction is None else args.val_fraction
            train, val = split_records(records, fraction, args.seed, group_regex=args.group_regex)
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    paths = write_split(train, val, args.out_dir, train_name=args.train_name, val_name=args.val_name)
    for name, path, part in (("train", paths[0], train), ("val", paths[1], val)):
        images = sorted({image_key(r) for r in part})
        groups = ""
        if args.group_regex:
            groups = f", {len(set(image_groups(images, args.group_regex).values()))} groups"
        print(f"{name}: {len(part)} records, {len(images)} images{groups} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
