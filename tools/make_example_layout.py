"""Lay the bundled CHASE_DB1 sample out as public retinal data sets usually are (for the guide's
"Your own data" section, docs/finetune.md).

    python tools/make_example_layout.py data/chase_db1 data/retina_raw

Writes OUT/images/NNX_img.jpg (each 512x512 image enlarged to 1024x1024, bilinear, JPEG quality 95,
standing for large originals), OUT/vessels/NNX_vessels.gif (the 1st observer's vessel mask enlarged
by pixel repetition, 0/255), OUT/fov/NNX_img_mask.gif (the field of view: grey > 10, holes filled,
0/255) and OUT/test.txt (the fixed test split, Image_11L..Image_14R, one image name a line), where NNX
is the child and eye (01L .. 14R). OUT must not exist yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from projects.sa2va.datasets.convert import read_binary_mask
from projects.sa2va.datasets.fov import auto_fov
from projects.sa2va.datasets.image_io import read_image_array

SCALE = 2
FIRST_TEST_CHILD = 11


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sample", type=Path, help="the bundled sample folder (data/chase_db1)")
    parser.add_argument("out", type=Path, help="new folder to write")
    args = parser.parse_args(argv)
    images = sorted((args.sample / "images").glob("Image_*.jpg"))
    if not images:
        print(f"error: no Image_*.jpg in {args.sample / 'images'}", file=sys.stderr)
        return 1
    if args.out.exists():
        print(f"error: {args.out} exists; give a new folder", file=sys.stderr)
        return 1
    for sub in ("images", "vessels", "fov"):
        (args.out / sub).mkdir(parents=True)
    test = []
    for path in images:
        sid = path.stem.removeprefix("Image_")  # e.g. 01L
        rgb = read_image_array(path)
        h, w = rgb.shape[:2]
        big = cv2.resize(rgb, (w * SCALE, h * SCALE), interpolation=cv2.INTER_LINEAR)
        Image.fromarray(big).save(args.out / "images" / f"{sid}_img.jpg", quality=95)
        vessels = read_binary_mask(args.sample / "masks" / f"{path.stem}_1stHO.png")
        vessels = np.kron(vessels, np.ones((SCALE, SCALE), dtype=bool))
        Image.fromarray(vessels.astype(np.uint8) * 255).save(args.out / "vessels" / f"{sid}_vessels.gif")
        fov = auto_fov(big)
        Image.fromarray(fov.astype(np.uint8) * 255).save(args.out / "fov" / f"{sid}_img_mask.gif")
        if int(sid[:2]) >= FIRST_TEST_CHILD:
            test.append(f"{sid}_img.jpg")
    (args.out / "test.txt").write_text("\n".join(test) + "\n")
    print(f"wrote {args.out}: {len(images)} images ({len(test)} in test.txt), vessels/, fov/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
