r"""Convert images + binary mask files (or a CSV of pairs, or a COCO instances JSON) into an annotations.json.

    # one object per image, exact RLE (default)
    python tools/masks_to_annotations.py --images data/x/images --masks data/x/masks \
        --out data/x/annotations.json --text "blood vessel"            # masks: {stem}_mask.png
    # image and mask names that differ: a named field on both sides
    python tools/masks_to_annotations.py --images I --masks M --out A.json --text "blood vessel" \
        --image-pattern "{id}_img.tif" --mask-pattern "{id}_vessels.gif"
    # several objects per image
    python tools/masks_to_annotations.py --images I --masks M --out A.json \
        --mask-pattern "{stem}_artery.png" --text artery --mask-pattern "{stem}_vein.png" --text vein
    # explicit pairs: a CSV with the columns image,mask[,text] (mask paths relative to --masks,
    # else to the CSV's folder; several rows for one image are several objects)
    python tools/masks_to_annotations.py --images I --pairs-csv pairs.csv --text "blood vessel" --out A.json
    # COCO instances JSON (category name -> text; polygons and RLE kept as they are)
    python tools/masks_to_annotations.py --coco instances.json --images I --out A.json
    # instance-ID masks (pixel value = object id, 0 = background; 8/16-bit PNG/TIFF or palette),
    # texts from an id map: JSON {"1": "optic disc", "2": "blood vessel"} (per file:
    # {"*": {...}, "0003.png": {...}}) or CSV id,text[,file]
    python tools/masks_to_annotations.py --images I --masks M --instance-ids --id-texts ids.json \
        --mask-pattern "{stem}.png" --out A.json
    # any of the above with every object of an image asked for in one question (one [SEG] each)
    python tools/masks_to_annotations.py ... --one-question

Instance ids: an id without a text is an error naming the file and the id (--skip-unmapped-ids skips
and lists them); two ids with one text in an image are an error (--merge-same-text: one object).

Patterns: ``{name}`` fields (any name; ``{stem}`` is the image file name without extension), ``*``
for any text; see projects/sa2va/datasets/pairing.py. Unpaired files (an image without a mask, a
mask without an image, two masks for one image) are listed with the reason and are an error
(unless --allow-missing; two masks for one image always is).

Suspicious masks (foreground above --max-foreground of the image, or IoU >= 0.8 with the image's
field of view: grey > 10/255, holes filled) are listed, and nothing is written unless
--accept-suspicious is given: pointing --masks at a folder of field-of-view masks is refused.

Prints a round-trip report (decoded annotation vs. source mask). Exit status: 0 on success; 1 on a
conversion error, unpaired files, suspicious masks, an invalid result, or an RLE round trip that is
not exact (nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.sa2va.datasets.annotations import validate_records, write_annotations
from projects.sa2va.datasets.convert import (
    ConversionError,
    ConversionResult,
    MaskSpec,
    SuspicionCheck,
    convert_coco,
    convert_mask_folder,
    convert_pairs_csv,
    format_report,
)
from projects.sa2va.datasets.instance_ids import IdTexts, ask_together, convert_instance_folder

DEFAULT_PATTERN = "{stem}_mask.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, help="image folder (image paths are written relative to it)")
    parser.add_argument("--masks", type=Path, help="mask folder (may be the image folder)")
    parser.add_argument(
        "--image-pattern",
        help="image file name pattern with named fields, e.g. '{id}_img.tif' (default: every image file)",
    )
    parser.add_argument(
        "--pairs-csv", type=Path, help="CSV with the columns image,mask[,text] instead of patterns"
    )
    parser.add_argument("--out", type=Path, required=True, help="annotations.json to write")
    parser.add_argument(
        "--mask-pattern",
        action="append",
        default=[],
        help=f"mask file name pattern, e.g. '{{id}}_vessels.gif' (default {DEFAULT_PATTERN!r}); "
        "pair with --text",
    )
    parser.add_argument(
        "--text", action="append", default=[], help="text of the object of each --mask-pattern"
    )
    parser.add_argument(
        "--format", choices=["rle", "polygon"], default=None, help="mask encoding (default rle)"
    )
    parser.add_argument("--tolerance", type=float, default=0.0, help="polygon simplification in pixels")
    parser.add_argument(
        "--threshold", type=int, default=None, help="mask pixels > threshold (0..255) are foreground (127)"
    )
    parser.add_argument(
        "--instance-ids",
        action="store_true",
        help="masks are instance-ID images (pixel value = object id, 0 = background); needs --id-texts",
    )
    parser.add_argument("--id-texts", type=Path, help="id map (.json or .csv) giving each id its text")
    parser.add_argument(
        "--skip-unmapped-ids",
        action="store_true",
        help="skip ids that have no text and list them (default: an error naming file and id)",
    )
    parser.add_argument(
        "--merge-same-text",
        action="store_true",
        help="ids of one image that share a text become one object (default: an error)",
    )
    parser.add_argument(
        "--one-question",
        action="store_true",
        help="ask for all objects of an image in one question (answer with one [SEG] per object): "
        'writes "turns": [[0, ..., n-1]] into records with several objects',
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="list images without a mask and masks without an image instead of failing",
    )
    parser.add_argument(
        "--accept-suspicious",
        action="store_true",
        help="write the annotations even if masks look like field-of-view / whole-image masks",
    )
    parser.add_argument(
        "--max-foreground",
        type=float,
        default=SuspicionCheck.max_foreground,
        help="a mask covering more than this fraction of its image is suspicious (default 0.5)",
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="list all-background masks instead of failing"
    )
    parser.add_argument("--coco", type=Path, help="convert this COCO instances JSON instead of mask files")
    parser.add_argument("--per-instance", action="store_true", help="COCO: one object per annotation")
    parser.add_argument("--summary-only", action="store_true", help="print only the overall report line(s)")
    args = parser.parse_args(argv)
    if (args.id_texts or args.skip_unmapped_ids or args.merge_same_text) and not args.instance_ids:
        parser.error("--id-texts / --skip-unmapped-ids / --merge-same-text go with --instance-ids")
    if args.instance_ids:
        if args.coco is not None or args.pairs_csv is not None:
            parser.error("--instance-ids reads a mask folder: drop --coco / --pairs-csv")
        if args.images is None or args.masks is None or args.id_texts is None:
            parser.error("--instance-ids needs --images, --masks and --id-texts")
        if args.text:
            parser.error("--instance-ids takes the texts from --id-texts: drop --text")
        if len(args.mask_pattern) > 1:
            parser.error("--instance-ids takes one --mask-pattern (the id mask of each image)")
        if args.threshold is not None:
            parser.error("--threshold does not apply to instance-ID masks (every non-zero id is an object)")
        return args
    if args.coco is not None:
        if args.format is not None or args.mask_pattern or args.text or args.masks:
            parser.error(
                "--coco keeps COCO polygons/RLE as they are: drop --format/--mask-pattern/--text/--masks"
            )
        if args.pairs_csv or args.image_pattern:
            parser.error("--coco cannot be combined with --pairs-csv or --image-pattern")
    elif args.pairs_csv is not None:
        if args.images is None:
            parser.error("--pairs-csv needs --images (record image paths are relative to it)")
        if args.mask_pattern or args.image_pattern:
            parser.error("--pairs-csv names every pair: drop --mask-pattern/--image-pattern")
        if len(args.text) > 1:
            parser.error("with --pairs-csv give at most one --text (the default of rows without text)")
    else:
        if args.images is None or args.masks is None:
            parser.error("--images and --masks are required (or use --coco)")
        if not args.text:
            parser.error("--text is required (the text of each mask pattern's object)")
        patterns = args.mask_pattern or [DEFAULT_PATTERN]
        if len(patterns) != len(args.text):
            parser.error(f"{len(patterns)} --mask-pattern but {len(args.text)} --text: give them in pairs")
        try:
            args.specs = [MaskSpec(p, t) for p, t in zip(patterns, args.text)]
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fmt = args.format or "rle"
    common = dict(
        fmt=fmt,
        tolerance=args.tolerance,
        allow_missing=args.allow_missing,
        skip_empty=args.skip_empty,
        suspicion=SuspicionCheck(max_foreground=args.max_foreground),
    )
    threshold = 127 if args.threshold is None else args.threshold
    try:
        if args.instance_ids:
            result = convert_instance_folder(
                args.images,
                args.masks,
                IdTexts.from_file(args.id_texts),
                mask_pattern=(args.mask_pattern or [DEFAULT_PATTERN])[0],
                image_pattern=args.image_pattern,
                skip_unmapped=args.skip_unmapped_ids,
                merge_same_text=args.merge_same_text,
                **common,
            )
        elif args.coco is not None:
            result: ConversionResult = convert_coco(args.coco, per_instance=args.per_instance)
        elif args.pairs_csv is not None:
            text = args.text[0] if args.text else None
            result = convert_pairs_csv(
                args.pairs_csv, args.images, masks_dir=args.masks, text=text, threshold=threshold, **common
            )
        else:
            result = convert_mask_folder(
                args.images,
                args.masks,
                args.specs,
                image_pattern=args.image_pattern,
                threshold=threshold,
                **common,
            )
        if args.one_question:
            result.records = ask_together(result.records)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(result, per_image=not args.summary_only))
    if result.suspicious and not args.accept_suspicious:
        print(
            f"error: {len(result.suspicious)} suspicious mask(s), listed above as SUSPICIOUS (first: "
            f"{result.suspicious[0].mask}); check that --masks is the object masks folder, or pass "
            "--accept-suspicious to write them anyway; nothing written",
            file=sys.stderr,
        )
        return 1

    problems = validate_records(result.records, args.out, args.images, check_images=args.images is not None)
    for problem in problems:
        print(f"INVALID {problem}", file=sys.stderr)
    if problems:
        print(f"error: {len(problems)} problem(s) in the converted records; nothing written", file=sys.stderr)
        return 1
    if fmt == "rle" and not result.exact:
        print("error: the RLE round trip is not exact (a bug); nothing written", file=sys.stderr)
        return 1
    write_annotations(result.records, args.out)
    n_objects = sum(len(r["mask"]) for r in result.records)
    line = f"wrote {args.out}: {len(result.records)} records, {n_objects} objects"
    if any("turns" in r for r in result.records):
        line += f" in {sum(len(r.get('turns', r['mask'])) for r in result.records)} questions"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
