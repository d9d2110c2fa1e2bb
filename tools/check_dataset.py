"""List every problem of an annotation file (schema, masks, images), then a summary line.

Every image is decoded completely (truncated and corrupt files are found); image paths outside
``--images`` (absolute, or ``..`` above it) and texts holding reserved markers (``[SEG]``,
``<image>``, ``<|im_start|>``, ...) are problems.

    python tools/check_dataset.py data/chase_db1/annotations.json --images data/chase_db1/images

Exit status 0 when the file is valid, 1 on any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.sa2va.datasets.annotations import AnnotationError, read_annotation_file, validate_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ann_file", type=Path, help="annotations.json")
    parser.add_argument("--images", type=Path, help="image folder the record paths are relative to")
    parser.add_argument(
        "--skip-images", action="store_true", help="do not open the images (schema checks only)"
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept absolute image paths and paths with '..' above the image folder (refused by default)",
    )
    args = parser.parse_args(argv)
    if args.images is None and not args.skip_images:
        parser.error("--images is required (or --skip-images for schema-only checks)")

    try:
        records = read_annotation_file(args.ann_file)
    except AnnotationError as err:
        print(err)
        print(f"{args.ann_file}: 0 records, 0 objects, 1 problem")
        return 1
    problems = validate_records(
        records,
        args.ann_file,
        args.images,
        check_images=not args.skip_images,
        decode_images=True,
        allow_outside_root=args.allow_outside_root,
        progress=True,
    )
    for problem in problems:
        print(problem)
    n_records = len(records) if isinstance(records, list) else 0
    n_objects = sum(
        len(r["mask"])
        for r in (records if isinstance(records, list) else [])
        if isinstance(r, dict) and isinstance(r.get("mask"), list)
    )
    print(f"{args.ann_file}: {n_records} records, {n_objects} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
