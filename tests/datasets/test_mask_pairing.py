"""Pairing images and masks whose names differ (patterns with named fields, a pairs CSV), unpaired
files with their reason, .ppm images, and suspicious (field-of-view) masks refused on real CHASE_DB1
images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations
from projects.sa2va.datasets.convert import (
    ConversionError,
    MaskSpec,
    MissingMaskError,
    convert_mask_folder,
    convert_pairs_csv,
    read_binary_mask,
)
from projects.sa2va.datasets.fov import auto_fov
from projects.sa2va.datasets.pairing import NamePattern, PartnerIndex, PatternError

REPO = Path(__file__).resolve().parents[2]
CHASE = REPO / "data" / "chase_db1"
IDS = ("01L", "01R", "02L")


def run_convert(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools/masks_to_annotations.py"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------------------- patterns


def test_pattern_fields_wildcards_and_repeats() -> None:
    p = NamePattern("{id}_img.tif")
    assert p.fields == ("id",) and p.match("07_img.tif") == {"id": "07"}
    assert p.match("07_img.tiff") is None and p.match("_img.tif") is None  # a field is >= 1 character
    assert NamePattern("{a}_{b}.png").match("x_y_z.png") == {"a": "x_y", "b": "z"}  # earlier fields longest
    rep = NamePattern("{p}_{eye}_{p}.png")
    assert rep.match("09_L_09.png") == {"p": "09", "eye": "L"} and rep.match("09_L_10.png") is None
    star = NamePattern("{stem}_mask.*")
    assert star.match("a_mask.gif") == {"stem": "a"} and not star.is_exact
    assert NamePattern("{{x}}_{id}.png").match("{x}_3.png") == {"id": "3"}
    assert NamePattern("{id}_vessels.gif").fill({"id": "07"}) == "07_vessels.gif"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{stem:.2}_v.gif", "format spec"),
        ("{stem!r}.png", "format spec or conversion"),
        ("{}.png", "must be a name"),
        ("{0}.png", "must be a name"),
        ("masks/{stem}.png", "is a path"),
        ("{stem.png", "literal braces"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        NamePattern(pattern)


def test_partner_index_needs_a_shared_field() -> None:
    with pytest.raises(PatternError, match="shares no field"):
        PartnerIndex(["a.png"], NamePattern("{rater}.png"), NamePattern("{id}_img.tif"))
    index = PartnerIndex(
        ["07_vessels.gif", "07_fov.gif"], NamePattern("{id}_vessels.gif"), NamePattern("{id}.tif")
    )
    assert index.find({"id": "07", "stem": "07"}) == ["07_vessels.gif"] and index.matching == [
        "07_vessels.gif"
    ]


# ------------------------------------------------------------------------------ a retinal layout


@pytest.fixture
def retina(tmp_path: Path) -> Path:
    """3 bundled CHASE_DB1 images as ``NN_img.tif`` + ``NN_vessels.gif`` + sibling ``fov/NN_img_mask.gif``."""
    for sub in ("images", "vessels", "fov"):
        (tmp_path / sub).mkdir()
    for sid in IDS:
        with Image.open(CHASE / "images" / f"Image_{sid}.jpg") as im:
            rgb = im.convert("RGB")
        rgb.save(tmp_path / "images" / f"{sid}_img.tif")
        vessels = read_binary_mask(CHASE / "masks" / f"Image_{sid}_1stHO.png")
        Image.fromarray(vessels.astype(np.uint8) * 255).save(tmp_path / "vessels" / f"{sid}_vessels.gif")
        fov = auto_fov(np.asarray(rgb))
        Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / "fov" / f"{sid}_img_mask.gif")
    return tmp_path


def _vessels(sid: str) -> np.ndarray:
    return read_binary_mask(CHASE / "masks" / f"Image_{sid}_1stHO.png")


def test_named_field_pairs_tif_images_with_gif_masks_exactly(retina: Path) -> None:
    out = retina / "annotations.json"
    proc = run_convert(
        "--images", retina / "images", "--masks", retina / "vessels", "--out", out, "--text", "blood vessel",
        "--image-pattern", "{id}_img.tif", "--mask-pattern", "{id}_vessels.gif",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "overall: 3 records, 3 objects, 0 px differ" in proc.stdout and "EXACT" in proc.stdout
    assert "SUSPICIOUS" not in proc.stdout
    records = load_annotations(out, retina / "images")
    assert [r["image"] for r in records] == [f"{sid}_img.tif" for sid in IDS]
    for sid, record in zip(IDS, records):
        assert np.array_equal(decode_record_masks(record, 512, 512)[0], _vessels(sid))


def test_stem_pattern_still_works_with_an_image_pattern(retina: Path) -> None:
    """``{stem}`` is the image stem whatever the image pattern: the FOV naming ``NN_img_mask.gif``."""
    result = convert_mask_folder(
        retina / "images",
        retina / "fov",
        [MaskSpec("{stem}_mask.gif", "fov")],
        image_pattern="{id}_img.tif",
        suspicion=None,
    )
    assert [r["image"] for r in result.records] == [f"{sid}_img.tif" for sid in IDS] and result.exact


def test_unpaired_files_are_listed_with_their_reason(retina: Path) -> None:
    (retina / "vessels" / "01R_vessels.gif").unlink()
    (retina / "vessels" / "02L_vessels.gif").rename(retina / "vessels" / "09L_vessels.gif")
    (retina / "vessels" / "notes.txt").write_text("not a mask")
    args = ["--image-pattern", "{id}_img.tif", "--mask-pattern", "{id}_vessels.gif", "--text", "v"]
    out = retina / "a.json"
    proc = run_convert("--images", retina / "images", "--masks", retina / "vessels", "--out", out, *args)
    assert proc.returncode == 1 and not out.exists()
    assert "3 unpaired file(s)" in proc.stderr and "02L_img.tif has no mask file" in proc.stderr
    assert (
        f"image {retina / 'images/01R_img.tif'} has no mask file {retina / 'vessels/01R_vessels.gif'} "
        "(pattern '{id}_vessels.gif', id='01R')" in proc.stderr
    )
    assert (
        f"mask {retina / 'vessels/09L_vessels.gif'} has no image: fits '{{id}}_vessels.gif' (id='09L') "
        f"but there is no image {retina / 'images/09L_img.tif'}" in proc.stderr
    )
    proc = run_convert(
        "--images", retina / "images", "--masks", retina / "vessels", "--out", out, *args, "--allow-missing"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"MISSING mask {retina / 'vessels/01R_vessels.gif'} for image {retina / 'images/01R_img.tif'}" in (
        proc.stdout
    )
    assert f"MASK WITHOUT IMAGE {retina / 'vessels/09L_vessels.gif'}" in proc.stdout
    assert "NO RECORD" in proc.stdout and [r["image"] for r in json.loads(out.read_text())] == ["01L_img.tif"]


def test_two_masks_for_one_image_is_always_an_error(retina: Path) -> None:
    (retina / "vessels" / "01L_vessels_2nd.gif").write_bytes(
        (retina / "vessels/01L_vessels.gif").read_bytes()
    )
    with pytest.raises(
        ConversionError, match=r"01L_img.tif has 2 masks under pattern '\{id\}_vessels\*.gif'"
    ):
        convert_mask_folder(
            retina / "images",
            retina / "vessels",
            [MaskSpec("{id}_vessels*.gif", "v")],
            image_pattern="{id}_img.tif",
            allow_missing=True,
        )


def test_image_pattern_not_matching_lists_the_ignored_images(retina: Path) -> None:
    Image.new("RGB", (512, 512)).save(retina / "images" / "01L_preview.png")
    result = convert_mask_folder(
        retina / "images",
        retina / "vessels",
        [MaskSpec("{id}_vessels.gif", "v")],
        image_pattern="{id}_img.tif",
    )
    assert result.unmatched_images == [str(retina / "images/01L_preview.png")] and len(result.records) == 3


def test_ppm_images_are_read(tmp_path: Path) -> None:
    """STARE ships ``im0001.ppm`` images and ``im0001.ah.ppm`` masks."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(40, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "im0001.ppm")
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 3:25] = True
    Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, 2)).save(tmp_path / "im0001.ah.ppm")
    result = convert_mask_folder(tmp_path, tmp_path, [MaskSpec("{stem}.ah.ppm", "vessel")])
    assert [r["image"] for r in result.records] == ["im0001.ppm"] and result.exact


# ----------------------------------------------------------------------------------------- CSV


def test_pairs_csv_end_to_end(retina: Path) -> None:
    csv_file = retina / "pairs.csv"
    csv_file.write_text(
        "image,mask,text\n"
        "01L_img.tif,vessels/01L_vessels.gif,blood vessel\n"
        "01R_img.tif,vessels/01R_vessels.gif,\n"
        "01R_img.tif,fov/01R_img_mask.gif,field of view\n"
        "02L_img.tif,vessels/02L_vessels.gif,blood vessel\n"
    )
    out = retina / "a.json"
    proc = run_convert(
        "--images", retina / "images", "--pairs-csv", csv_file, "--text", "blood vessel", "--out", out,
        "--accept-suspicious",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "SUSPICIOUS mask" in proc.stdout and "01R_img_mask.gif" in proc.stdout  # listed, accepted
    records = load_annotations(out, retina / "images")
    assert [(r["image"], r["text"]) for r in records] == [
        ("01L_img.tif", ["blood vessel"]),
        ("01R_img.tif", ["blood vessel", "field of view"]),
        ("02L_img.tif", ["blood vessel"]),
    ]
    assert np.array_equal(decode_record_masks(records[1], 512, 512)[0], _vessels("01R"))


def test_pairs_csv_errors_name_file_line_and_value(retina: Path) -> None:
    csv_file = retina / "pairs.csv"
    csv_file.write_text(
        "image,mask\n01L_img.tif,vessels/01L_vessels.gif\n01L_img.tif,vessels/01R_vessels.gif\n"
    )
    with pytest.raises(
        ConversionError, match=r"pairs.csv: line 3: image '01L_img.tif' with text 'v' is already"
    ):
        convert_pairs_csv(csv_file, retina / "images", text="v")
    csv_file.write_text("picture,mask\na,b\n")
    with pytest.raises(ConversionError, match=r"lacks the column\(s\) \['image'\]"):
        convert_pairs_csv(csv_file, retina / "images", text="v")
    csv_file.write_text("image,mask\n01L_img.tif,vessels/01L_vessels.gif\n")
    with pytest.raises(ConversionError, match="line 2: no text"):
        convert_pairs_csv(csv_file, retina / "images")
    csv_file.write_text("image,mask\n01L_img.tif,vessels/gone.gif\n05L_img.tif,vessels/01R_vessels.gif\n")
    with pytest.raises(MissingMaskError) as err:
        convert_pairs_csv(csv_file, retina / "images", text="v")
    message = str(err.value)
    assert f"has no mask file {retina / 'vessels/gone.gif'} ({csv_file} line 2)" in message
    assert f"{csv_file} line 3 names image {retina / 'images/05L_img.tif'}, which does not exist" in message
    assert f"image {retina / 'images/02L_img.tif'} has no mask (no row of {csv_file} names it)" in message


# ----------------------------------------------------------------------------------- suspicious


def test_fov_mask_of_a_real_chase_image_is_refused_without_the_flag(tmp_path: Path) -> None:
    """The mistake of the issue: --masks pointed at field-of-view masks (grey > 10 of the image)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with Image.open(CHASE / "images/Image_05L.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "images/Image_05L.png")
    fov = np.asarray(Image.fromarray(rgb).convert("L")) > 10  # the FOV disc by thresholding
    assert 0.6 < fov.mean() < 0.75
    Image.fromarray(fov.astype(np.uint8) * 255).save(tmp_path / "masks/Image_05L_mask.png")
    out = tmp_path / "a.json"
    proc = run_convert(
        "--images", tmp_path / "images", "--masks", tmp_path / "masks", "--text", "v", "--out", out
    )
    assert proc.returncode == 1 and not out.exists()
    mask = tmp_path / "masks/Image_05L_mask.png"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SUSPICIOUS"))
    assert f"SUSPICIOUS mask {mask} for image {tmp_path / 'images/Image_05L.png'} [v]: covers 69." in line
    assert "matches the image's field of view (IoU 1.000" in line
    assert "--accept-suspicious" in proc.stderr and str(mask) in proc.stderr
    proc = run_convert(
        "--images", tmp_path / "images", "--masks", tmp_path / "masks", "--text", "v", "--out", out,
        "--accept-suspicious",
    )  # fmt: skip
    assert proc.returncode == 0 and out.is_file()


def test_fov_shaped_mask_below_half_is_still_caught(tmp_path: Path) -> None:
    """A small field of view (< 50 % of the image) is caught by the IoU test alone."""
    (tmp_path / "images").mkdir()
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2  # 31 % of the image
    rgb[disc] = (120, 60, 30)
    rgb[30:34, 20:44] = (5, 5, 5)  # a dark vessel inside the disc: a hole of the threshold, filled
    Image.fromarray(rgb).save(tmp_path / "images/a.png")
    Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "images/a_mask.png")
    result = convert_mask_folder(tmp_path / "images", tmp_path / "images", [MaskSpec("{stem}_mask.png", "v")])
    (s,) = result.suspicious
    assert (
        s.mask.endswith("a_mask.png") and len(s.reasons) == 1 and "field of view (IoU 1.000" in s.reasons[0]
    )
    vessels = np.zeros((64, 64), dtype=bool)
    vessels[30:34, 10:54] = True
    Image.fromarray(vessels.astype(np.uint8) * 255).save(tmp_path / "images/a_mask.png")
    assert not convert_mask_folder(
        tmp_path / "images", tmp_path / "images", [MaskSpec("{stem}_mask.png", "v")]
    ).suspicious
