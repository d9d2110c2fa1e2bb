"""Build the bundled CHASE_DB1 sample (data/chase_db1/) from the original dataset folder.

    python tools/make_chase_sample.py [SOURCE_DIR] [--out data/chase_db1]

SOURCE_DIR (default ../shared/data/chase_db1, relative to the repository root) holds images/
(Image_XXY.jpg, 999x960) and masks/ (Image_XXY_1stHO.png) and SOURCE.md. Output: images resized to
512x512 (area interpolation, JPEG quality 90), 1stHO masks resized to 512x512 (area interpolation
of the 0/1 mask, then >= 0.5), annotations.json (all 28, exact RLE, text "blood vessel"),
annotations_train.json (Image_01L..Image_10R), annotations_test.json (Image_11L..Image_14R) and
SOURCE.md (original attribution + what changed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from projects.sa2va.datasets.annotations import validate_records, write_annotations
from projects.sa2va.datasets.convert import (
    MaskSpec,
    convert_mask_folder,
    format_report,
    read_binary_mask,
    resize_image,
    resize_mask,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 512
JPEG_QUALITY = 90
MASK_SUFFIX = "_1stHO.png"
TEXT = "blood vessel"
N_TRAIN_CHILDREN = 10  # Image_01L..Image_10R train, Image_11L..Image_14R test (the common split)

SOURCE_TEMPLATE = """# CHASE_DB1 sample (512x512, 1st annotator) - derived data, CC BY 4.0

This folder is a modified copy of the CHASE_DB1 retinal vessel reference dataset
(Kingston University / St George's, University of London), licensed under the Creative Commons
Attribution 4.0 International licence (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).
Original record: https://researchdata.kingston.ac.uk/96/ . If you use it, cite:

- M. M. Fraz, P. Remagnino, A. Hoppe, B. Uyyanonvara, A. R. Rudnicka, C. G. Owen, S. A. Barman,
  "An ensemble classification-based approach applied to retinal blood vessel segmentation",
  IEEE Transactions on Biomedical Engineering 59(9):2538-2548, 2012.
- C. G. Owen et al. (the Child Heart and Health Study in England, CHASE).

## What was changed (by `tools/make_chase_sample.py`)

- All 28 images (14 children x left/right eye, 999x960 RGB JPEG) resized to {size}x{size}
  (OpenCV area interpolation; the aspect ratio changes slightly) and re-encoded as JPEG quality {quality}.
- Only the FIRST human observer's vessel annotation (`*_1stHO.png`) is kept; the second observer's
  masks (`*_2ndHO.png`) are not included. Each mask was resized to {size}x{size} by area
  interpolation of its 0/1 values, then thresholded at >= 0.5, and saved as a 1-bit PNG
  (`masks/Image_XXY_1stHO.png`, vessel = 1).
- `annotations.json`: all 28 images, one object per image, text "{text}", mask as exact COCO RLE
  of the {size}x{size} PNG (round trip verified: 0 pixels differ).
- Split (CHASE_DB1 has no official one; this is the common one): `annotations_train.json` =
  Image_01L..Image_{n_train:02d}R ({n_train_images} images), `annotations_test.json` =
  Image_{n_test_first:02d}L..Image_14R ({n_test_images} images).

## Original SOURCE.md (verbatim)

{original}
"""


def _verify_checksums(source: Path) -> int:
    """Check files listed in SOURCE/SHA256SUMS (if present); returns how many were checked."""
    sums = source / "SHA256SUMS"
    if not sums.is_file():
        return 0
    checked = 0
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = source / name.lstrip("*").strip()
        if not path.is_file():
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise SystemExit(f"error: checksum mismatch for {path}")
        checked += 1
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", type=Path, default=REPO / "../shared/data/chase_db1")
    parser.add_argument("--out", type=Path, default=REPO / "data/chase_db1")
    args = parser.parse_args(argv)
    source, out = args.source, args.out
    images = sorted((source / "images").glob("Image_*.jpg"))
    if len(images) != 28:
        print(f"error: expected 28 Image_*.jpg in {source / 'images'}, found {len(images)}", file=sys.stderr)
        return 1
    print(f"verified {_verify_checksums(source)} source checksums")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    for path in images:
        mask_path = source / "masks" / f"{path.stem}{MASK_SUFFIX}"
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        small = resize_image(rgb, SIZE, SIZE)
        Image.fromarray(small).save(out / "images" / path.name, quality=JPEG_QUALITY)
        mask = resize_mask(read_binary_mask(mask_path), SIZE, SIZE)
        Image.fromarray(mask).convert("1").save(out / "masks" / mask_path.name, optimize=True)

    result = convert_mask_folder(
        out / "images", out / "masks", [MaskSpec("{stem}" + MASK_SUFFIX, TEXT)], fmt="rle"
    )
    print(format_report(result))
    if not result.exact or len(result.records) != 28:
        print("error: RLE round trip not exact or records missing", file=sys.stderr)
        return 1
    problems = validate_records(result.records, out / "annotations.json", out / "images")
    if problems:
        print("\n".join(map(str, problems)), file=sys.stderr)
        return 1
    train = [r for r in result.records if int(r["id"][6:8]) <= N_TRAIN_CHILDREN]
    test = [r for r in result.records if int(r["id"][6:8]) > N_TRAIN_CHILDREN]
    write_annotations(result.records, out / "annotations.json")
    write_annotations(train, out / "annotations_train.json")
    write_annotations(test, out / "annotations_test.json")
    original = (source / "SOURCE.md").read_text(encoding="utf-8").strip()
    (out / "SOURCE.md").write_text(
        SOURCE_TEMPLATE.format(
            size=SIZE,
            quality=JPEG_QUALITY,
            text=TEXT,
            n_train=N_TRAIN_CHILDREN,
            n_train_images=len(train),
            n_test_first=N_TRAIN_CHILDREN + 1,
            n_test_images=len(test),
            original="\n".join(f"> {line}".rstrip() for line in original.splitlines()),
        ),
        encoding="utf-8",
    )
    print(f"wrote {out}: {len(result.records)} records ({len(train)} train, {len(test)} test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
