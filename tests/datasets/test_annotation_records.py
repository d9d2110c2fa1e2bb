"""Record validation (one fixture per bad-input class), loading, and mask encode/decode."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from projects.sa2va.datasets.annotations import (
    AnnotationError,
    MaskFormatError,
    Problem,
    decode_object_mask,
    decode_record_masks,
    encode_mask_rle,
    load_annotations,
    mask_to_polygons,
    validate_record,
    validate_records,
)
from projects.sa2va.datasets.convert import count_holes

H, W = 20, 30
SQUARE = [2, 2, 10, 2, 10, 10, 2, 10]


def _ring() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[3:15, 4:20] = True
    mask[7:11, 9:14] = False
    return mask


def _good(image: str = "a.png") -> dict:
    return {"image": image, "text": ["vessel"], "mask": [[SQUARE]]}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "b.png")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


def _only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def _rle(mask: np.ndarray) -> dict:
    return encode_mask_rle(mask)


# (record overrides, expected field, message fragment); the bad record sits at index 1.
BAD_RECORDS = {
    "missing_image": ({"image": "nope.png"}, "image", "image file not found"),
    "unreadable_image": ({"image": "broken.jpg"}, "image", "cannot read image"),
    "rle_size_mismatch": (
        {"mask": [[{"size": [H + 1, W], "counts": [0, (H + 1) * W]}]]},
        "mask[0][0]",
        "does not match the image size",
    ),
    "two_point_polygon": ({"mask": [[[1, 1, 5, 5]]]}, "mask[0][0]", "polygon has 2 points, needs >= 3"),
    "odd_coordinates": ({"mask": [[[1, 1, 5, 5, 7]]]}, "mask[0][0]", "odd number of coordinates"),
    "nan_coordinate": ({"mask": [[[1, 1, 5, float("nan"), 7, 7]]]}, "mask[0][0]", "NaN or infinite"),
    "inf_coordinate": ({"mask": [[[1, 1, 5, float("inf"), 7, 7]]]}, "mask[0][0]", "NaN or infinite"),
    "out_of_bounds": ({"mask": [[[1, 1, W + 0.5, 1, 5, 5]]]}, "mask[0][0]", "outside the 30x20"),
    "negative": ({"mask": [[[-1, 1, 5, 1, 5, 5]]]}, "mask[0][0]", "negative coordinates"),
    "count_mismatch": ({"text": ["a", "b"]}, "mask", "2 texts but 1 masks"),
    "empty_text_string": ({"text": ["  "]}, "text[0]", "text is empty"),
    "empty_text_list": ({"text": [], "mask": []}, "text", "text is empty"),
    "object_without_parts": ({"mask": [[]]}, "mask[0]", "object has no parts"),
    "zero_pixel_object": (
        {"mask": [[{"size": [H, W], "counts": [H * W]}]]},
        "mask[0]",
        "decodes to 0 pixels",
    ),
    "zero_area_polygon": ({"mask": [[[1, 1, 5, 1, 9, 1]]]}, "mask[0]", "decodes to 0 pixels"),
    "text_not_list": ({"text": "vessel"}, "text", "text must be a list of strings"),
    "text_item_not_str": ({"text": [3]}, "text[0]", "text must be a string"),
    "mask_not_list": ({"mask": {"a": 1}}, "mask", "mask must be a list"),
    "flat_object": ({"mask": [SQUARE]}, "mask[0]", "flat list of numbers"),
    "part_wrong_type": ({"mask": [[5]]}, "mask[0]", "flat list of numbers"),
    "part_string": ({"mask": [["x"]]}, "mask[0][0]", "a part must be a polygon"),
    "nested_polygon": ({"mask": [[[[1, 1], [5, 1], [5, 5]]]]}, "mask[0][0]", "flat list"),
    "bool_coordinate": ({"mask": [[[True, 1, 5, 1, 5, 5]]]}, "mask[0][0]", "must be numbers"),
    "corrupt_rle": ({"mask": [[{"size": [H, W], "counts": "ab"}]]}, "mask[0][0]", "truncated"),
    "rle_wrong_total": ({"mask": [[{"size": [H, W], "counts": [5, 5]}]]}, "mask[0][0]", "needs 600"),
    "rle_missing_counts": ({"mask": [[{"size": [H, W]}]]}, "mask[0][0]", "lacks key"),
    "image_not_str": ({"image": 7}, "image", "non-empty relative path"),
    "id_not_str": ({"id": 7}, "id", "id must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_each_bad_input_class_is_reported(case: str, image_root: Path) -> None:
    overrides, field, fragment = BAD_RECORDS[case]
    bad = {**_good("b.png"), **overrides}
    problem = _only(validate_records([_good(), bad], "data/x/annotations.json", image_root))
    assert (problem.file, problem.index, problem.field) == ("data/x/annotations.json", 1, field)
    assert fragment in problem.message
    text = str(problem)
    assert text.startswith("data/x/annotations.json: record 1")
    assert f"field '{field}'" in text


@pytest.mark.parametrize("key", ["image", "text", "mask"])
def test_missing_key(key: str) -> None:
    record = _good()
    del record[key]
    problems = validate_record(record, 4, "f.json")
    assert [p.field for p in problems] == [key]
    assert f"missing key '{key}'" in problems[0].message


def test_record_not_a_dict_and_file_level_problems() -> None:
    problem = _only(validate_records([_good(), ["a.png"]], "f.json"))
    assert (problem.index, problem.field) == (1, None)
    assert str(problem) == "f.json: record 1: record must be a JSON object, got list"
    assert _only(validate_records({"a": 1}, "f.json")).index is None
    assert "no records" in _only(validate_records([], "f.json")).message


def test_duplicate_record(image_root: Path) -> None:
    problem = _only(validate_records([_good(), _good("b.png"), _good()], "f.json", image_root))
    assert problem.index == 2 and "duplicate of record 0" in problem.message


def test_polygon_on_image_border_is_allowed() -> None:
    border = [0, 0, W, 0, W, H, 0, H]
    assert validate_record({**_good(), "mask": [[border]]}, 0, "f.json", (H, W)) == []


def test_rle_sizes_must_agree_without_image() -> None:
    record = {
        **_good(),
        "text": ["a", "b"],
        "mask": [[{"size": [H, W], "counts": [0, H * W]}], [{"size": [H, 9], "counts": [0, H * 9]}]],
    }
    problem = _only(validate_record(record, 0, "f.json"))
    assert problem.field == "mask[1][0]" and "differs from" in problem.message


def test_every_problem_reported_at_once(image_root: Path) -> None:
    records = [_good(), {**_good(), "image": "nope.png", "text": [""]}, {**_good(), "mask": [[[1, 1]]]}]
    problems = validate_records(records, "f.json", image_root)
    assert [(p.index, p.field) for p in problems] == [(1, "image"), (1, "text[0]"), (2, "mask[0][0]")]


def test_annotation_error_format() -> None:
    err = AnnotationError(
        "data/x/annotations.json", 3, "mask[1][0]", "polygon has 2 points, needs >= 3", "img_07.jpg"
    )
    assert str(err) == (
        "data/x/annotations.json: record 3 ('img_07.jpg'), field 'mask[1][0]': "
        "polygon has 2 points, needs >= 3"
    )
    assert (err.file, err.index, err.field, err.message) == (
        "data/x/annotations.json",
        3,
        "mask[1][0]",
        "polygon has 2 points, needs >= 3",
    )
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert (
        str(AnnotationError("f.json", None, None, "annotation file not found"))
        == "f.json: annotation file not found"
    )


def test_load_annotations_count_in_equals_count_out(image_root: Path, tmp_path: Path) -> None:
    records = [_good(), _good("b.png"), {**_good(), "text": ["other"]}]
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(records))
    loaded = load_annotations(ann, image_root)
    assert loaded == records and len(loaded) == 3


def test_load_annotations_raises_first_problem_with_total(image_root: Path, tmp_path: Path) -> None:
    records = [_good(), {**_good(), "mask": [[[1, 1, 2, 2]]]}, {**_good(), "image": "nope.png"}]
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(records))
    with pytest.raises(AnnotationError) as info:
        load_annotations(ann, image_root)
    err = info.value
    assert (err.file, err.index, err.field) == (str(ann), 1, "mask[0][0]")
    assert str(ann) in str(err) and "record 1" in str(err) and "field 'mask[0][0]'" in str(err)
    assert "2 problem(s) in total" in str(err) and "tools/check_dataset.py" in str(err)


def test_load_annotations_bad_json_and_missing_file(tmp_path: Path) -> None:
    ann = tmp_path / "annotations.json"
    ann.write_text('[{"image": "a.png",]')
    with pytest.raises(AnnotationError, match=r"invalid JSON at line 1"):
        load_annotations(ann, tmp_path)
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations(tmp_path / "missing.json", tmp_path)


def test_nan_from_json_file_is_reported(image_root: Path, tmp_path: Path) -> None:
    ann = tmp_path / "annotations.json"
    ann.write_text('[{"image": "a.png", "text": ["v"], "mask": [[[1, 1, NaN, 5, 7, 7]]]}]')
    with pytest.raises(AnnotationError, match="NaN or infinite"):
        load_annotations(ann, image_root)


# ------------------------------------------------------------------------------------ decoding


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode under numpy 2
def test_rle_round_trip_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((H, W)) > 0.6
    rle = encode_mask_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    json.dumps(rle)
    assert np.array_equal(decode_object_mask([rle], H, W), mask)
    reference = coco_mask.decode({"size": [H, W], "counts": rle["counts"].encode()}).astype(bool)
    assert np.array_equal(reference, mask)


def test_uncompressed_rle_counts_accepted() -> None:
    mask = np.zeros((H, W), dtype=bool)
    mask[:, 0] = True  # column-major runs: H foreground pixels, then background
    assert np.array_equal(decode_object_mask([{"size": [H, W], "counts": [0, H, H * W - H]}], H, W), mask)


def test_parts_are_unioned_not_summed() -> None:
    rle = np.zeros((H, W), dtype=bool)
    rle[5:8, 5:8] = True
    obj = [SQUARE, [5, 5, 12, 5, 12, 12, 5, 12], encode_mask_rle(rle)]
    out = decode_object_mask(obj, H, W)
    assert out.dtype == np.bool_ and out.shape == (H, W)
    single = [decode_object_mask([part], H, W) for part in obj]
    assert np.array_equal(out, np.logical_or.reduce(single))
    assert out.sum() < sum(m.sum() for m in single)  # overlap counted once


def test_decode_record_masks_shape_and_errors() -> None:
    record = {"image": "a.png", "text": ["a", "b"], "mask": [[SQUARE], [encode_mask_rle(_ring())]]}
    masks = decode_record_masks(record, H, W)
    assert masks.shape == (2, H, W) and masks.dtype == np.bool_
    assert np.array_equal(masks[1], _ring())
    with pytest.raises(MaskFormatError, match="RLE size"):
        decode_object_mask([encode_mask_rle(_ring())], H + 1, W)
    with pytest.raises(MaskFormatError, match=r"non-empty list of parts"):
        decode_object_mask([], H, W)
    with pytest.raises(MaskFormatError, match="outside"):
        decode_object_mask([[0, 0, 1e9, 0, 1e9, 1e9]], H, W)


def test_encode_rejects_non_bool() -> None:
    with pytest.raises(TypeError):
        encode_mask_rle(np.zeros((H, W), np.uint8))


def test_polygons_keep_every_component_but_not_holes() -> None:
    mask = _ring()
    mask[17, 25] = True  # a single-pixel component
    mask[16:19, 2] = True  # a 1-px vertical line
    polygons = mask_to_polygons(mask)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    decoded = decode_object_mask(polygons, H, W)
    assert decoded[17, 25] and decoded[16:19, 2].all()  # tiny components are not dropped
    assert count_holes(mask) == 1 and count_holes(decoded) == 0  # OR-ed polygons fill the hole
    assert np.count_nonzero(decoded != mask) > 0  # the loss is real and measurable
    assert np.array_equal(decode_object_mask([encode_mask_rle(mask)], H, W), mask)  # RLE is exact
