"""List every problem of an annotation file (schema, masks, images), then a summary line.

Every image is decoded completely (truncated and corrupt files are found); image paths outside
``--images`` (absolute, or ``..`` above it) and texts holding reserved markers (``[SEG]``,
``<image>``, ``<|im_start|>``, ...) are problems.

    python tools/check_dataset.py data/chase_db1/annotations.json --images data/chase_db1/images

The summary gives the objects per record and, when records ask for several objects in one
question (``"turns"``), the questions and the ``[SEG]`` tokens per answer; the counts are
validated (``text`` and ``mask`` of equal length, every object in exactly one turn).

Notes (not problems) name questions with more than one target: the same image and text in several records
with different masks, or one text asked twice in a record.

Exit status 0 when the file is valid, 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from projects.sa2va.datasets.annotations import AnnotationError, read_annotation_file, validate_records


def _histogram(counter: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def ambiguity_notes(records: list, bad: set[int | None]) -> list[str]:
    """Notes (not problems) on questions that get more than one target.

    * the same image and text in several records with different masks (e.g. two annotators): training
      sees both targets for one question, and ``tools/test.py`` needs one record per image;
    * one text asked twice in one record: identical prompts for different masks.

    Args:
        records: the file's records (dicts with equal-length ``text`` / ``mask`` lists are read).
        bad: indices of records with problems, left out.
    """
    notes: list[str] = []
    targets: dict[tuple[str, str], dict[str, list[int]]] = {}
    for i, r in enumerate(records):
        if i in bad or not isinstance(r, dict):
            continue
        texts, masks = r.get("text"), r.get("mask")
        if not (isinstance(texts, list) and isinstance(masks, list) and len(texts) == len(masks)):
            continue
        for text, n in Counter(t for t in texts if isinstance(t, str)).items():
            if n > 1:
                notes.append(
                    f"note: record {i}: text {text!r} asked {n} times in one record (one prompt, {n} masks)"
                )
        for text, mask in zip(texts, masks, strict=True):
            key = (str(r.get("image")), str(text))
            targets.setdefault(key, {}).setdefault(json.dumps(mask, sort_keys=True, default=repr), []).append(
                i
            )
    for (image, text), by_mask in targets.items():
        if len(by_mask) > 1:
            where = sorted({i for ids in by_mask.values() for i in ids})
            notes.append(
                f"note: records {', '.join(map(str, where))}: image {image!r}, text {text!r} with "
                f"{len(by_mask)} different masks (training sees every one as a target for the same question; "
                "tools/test.py needs one record per image)"
            )
    return notes


def count_lines(records: list, bad: set[int | None]) -> list[str]:
    """Objects per record and, when records have ``"turns"``, questions and ``[SEG]`` per answer.

    Args:
        records: the file's records; those that are not dicts with a ``mask`` list are left out.
        bad: indices of records with problems, left out of the question counts.
    """
    usable = [
        (i, r) for i, r in enumerate(records) if isinstance(r, dict) and isinstance(r.get("mask"), list)
    ]
    if not usable:
        return []
    lines = [
        f"objects per record (objects: records): {_histogram(Counter(len(r['mask']) for _, r in usable))}"
    ]
    ok = [r for i, r in usable if i not in bad]
    if any("turns" in r for r in ok):
        answers = Counter(len(t) for r in ok for t in r.get("turns", [[i] for i in range(len(r["mask"]))]))
        lines.append(
            f"{sum('turns' in r for r in ok)} record(s) ask for several objects in one question; "
            f"{sum(answers.values())} questions, [SEG] per answer ([SEG]: answers): {_histogram(answers)}"
        )
    return lines


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
    listed = records if isinstance(records, list) else []
    n_records = len(listed)
    n_objects = sum(len(r["mask"]) for r in listed if isinstance(r, dict) and isinstance(r.get("mask"), list))
    for line in ambiguity_notes(listed, {p.index for p in problems}):
        print(line)
    for line in count_lines(listed, {p.index for p in problems}):
        print(line)
    print(f"{args.ann_file}: {n_records} records, {n_objects} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
