"""Instance-ID masks (pixel value = object id) -> annotation records, on real PNG / TIFF files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations
from projects.sa2va.datasets.convert import ConversionError, format_report
from projects.sa2va.datasets.instance_ids import (
    IdTexts,
    ask_together,
    convert_instance_folder,
    probs_to_ids,
    read_instance_ids,
    reconstruct_ids,
    save_id_image,
)

REPO = Path(__file__).resolve().parents[2]
H, W = 40, 48


def _ids_a() -> np.ndarray:
    """ids 1 (a ring with a hole), 2 (two components), 3 (a 1-px line)."""
    ids = np.zeros((H, W), dtype=np.uint16)
    ids[4:16, 4:16] = 1
    ids[8:12, 8:12] = 0  # hole in id 1
    ids[20:24, 2:6] = 2
    ids[30:34, 30:36] = 2  # second component of id 2
    ids[37, 5:40] = 3
    return ids


def _ids_b() -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint16)
    ids[2:10, 30:40] = 2
    ids[20:30, 10:20] = 1
    return ids


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _image(tmp_path / "images" / "0001.jpg", 0)
    _image(tmp_path / "images" / "0002.jpg", 1)
    Image.fromarray(_ids_a().astype(np.uint8), mode="L").save(tmp_path / "masks" / "0001.png")
    Image.fromarray(_ids_b().astype(np.uint8), mode="L").save(tmp_path / "masks" / "0002.png")
    (tmp_path / "ids.json").write_text(json.dumps({"1": "optic disc", "2": "exudate", "3": "vessel"}))
    return tmp_path


def _convert(folder: Path, **kwargs) -> object:
    texts = kwargs.pop("id_texts", None) or IdTexts.from_file(folder / "ids.json")
    kwargs.setdefault("suspicion", None)
    return convert_instance_folder(
        folder / "images", folder / "masks", texts, mask_pattern="{stem}.png", **kwargs
    )


def test_each_id_is_one_object_and_the_round_trip_is_exact(folder: Path):
    result = _convert(folder)
    assert [r["image"] for r in result.records] == ["0001.jpg", "0002.jpg"]
    first, second = result.records
    assert first["text"] == ["optic disc", "exudate", "vessel"]
    assert first["instance_ids"] == [[1], [2], [3]]
    assert second["text"] == ["optic disc", "exudate"]  # ids in increasing order
    assert result.exact and len(result.round_trips) == 5
    masks = decode_record_masks(first, H, W)
    for k, value in enumerate((1, 2, 3)):
        assert np.array_equal(masks[k], _ids_a() == value)
    # the whole id image comes back, hole and components included
    assert np.array_equal(reconstruct_ids(first, H, W), _ids_a().astype(np.int64))
    assert np.array_equal(reconstruct_ids(second, H, W), _ids_b().astype(np.int64))
    rt = next(r for r in result.round_trips if r.text == "exudate" and r.image == "0001.jpg")
    assert (rt.components_source, rt.holes_source) == (2, 0)
    assert rt.source.endswith("0001.png id 2")
    assert "EXACT" in format_report(result)


def test_16_bit_png_and_tiff_ids_above_255(folder: Path):
    ids = np.zeros((H, W), dtype=np.uint16)
    ids[1:9, 1:9] = 300
    ids[20:30, 20:30] = 65535
    ids[35:38, 2:40] = 1
    (folder / "images" / "0002.jpg").unlink()
    (folder / "masks" / "0002.png").unlink()
    Image.fromarray(ids).save(folder / "masks" / "0001.png")  # PIL writes 16-bit grey (I;16)
    Image.fromarray(ids).save(folder / "masks" / "0001.tif")
    for name in ("0001.png", "0001.tif"):
        with Image.open(folder / "masks" / name) as im:
            assert im.mode.startswith("I;16"), im.mode
        assert np.array_equal(read_instance_ids(folder / "masks" / name), ids.astype(np.int64))
    (folder / "ids.json").write_text(json.dumps({"1": "vessel", "300": "optic disc", "65535": "macula"}))
    for pattern in ("{stem}.png", "{stem}.tif"):
        texts = IdTexts.from_file(folder / "ids.json")
        result = convert_instance_folder(
            folder / "images",
            folder / "masks",
            texts,
            mask_pattern=pattern,
            suspicion=None,
        )
        record = result.records[0]
        assert record["text"] == ["vessel", "optic disc", "macula"]
        assert record["instance_ids"] == [[1], [300], [65535]]
        assert np.array_equal(reconstruct_ids(record, H, W), ids.astype(np.int64))
        assert result.exact


def test_palette_png_uses_the_index_as_the_id(folder: Path):
    im = Image.fromarray(_ids_a().astype(np.uint8), mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    im.save(folder / "masks" / "0001.png")
    with Image.open(folder / "masks" / "0001.png") as back:
        assert back.mode == "P"
    assert np.array_equal(read_instance_ids(folder / "masks" / "0001.png"), _ids_a().astype(np.int64))


def test_colour_masks_are_refused(folder: Path):
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(folder / "masks" / "0001.png")
    with pytest.raises(ConversionError, match=r"0001\.png has RGB pixels"):
        _convert(folder)


def test_an_id_without_text_is_an_error_naming_file_and_id(folder: Path):
    (folder / "ids.json").write_text(json.dumps({"1": "optic disc", "2": "exudate"}))
    with pytest.raises(ConversionError) as err:
        _convert(folder)
    message = str(err.value)
    assert "0001.png: id 3 (35 px) has no text" in message
    assert "--skip-unmapped-ids" in message


def test_skipping_unmapped_ids_lists_them(folder: Path):
    (folder / "ids.json").write_text(json.dumps({"1": "optic disc", "2": "exudate"}))
    result = _convert(folder, skip_unmapped=True)
    assert result.records[0]["text"] == ["optic disc", "exudate"]
    assert result.unmapped_ids == [(str(folder / "masks" / "0001.png"), 3, 35)]
    assert "UNMAPPED id 3 skipped in" in format_report(result)


def test_per_file_texts_and_csv_map(folder: Path):
    (folder / "ids.json").write_text(
        json.dumps({"*": {"1": "optic disc", "2": "exudate", "3": "vessel"}, "0002.png": {"2": "drusen"}})
    )
    result = _convert(folder)
    assert result.records[1]["text"] == ["optic disc", "drusen"]
    assert result.records[0]["text"] == ["optic disc", "exudate", "vessel"]
    (folder / "ids.csv").write_text("id,text,file\n1,optic disc,\n2,exudate,\n3,vessel,\n2,drusen,0002.png\n")
    csv_result = _convert(folder, id_texts=IdTexts.from_file(folder / "ids.csv"))
    assert csv_result.records == result.records


@pytest.mark.parametrize(
    "content, message",
    [
        ({"0": "background"}, "id 0 is the background"),
        ({"x": "a"}, "id 'x' is not a non-negative integer"),
        ({"1": ""}, "text must be a non-empty string"),
        ({"1": "a", "0002.png": {"1": "b"}}, "mixes id entries and per-file objects"),
    ],
)
def test_bad_id_maps_name_the_entry(tmp_path: Path, content: dict, message: str):
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConversionError, match=message):
        IdTexts.from_file(path)


def test_two_ids_with_one_text_are_an_error_or_merged(folder: Path):
    (folder / "ids.json").write_text(json.dumps({"1": "lesion", "2": "lesion", "3": "vessel"}))
    with pytest.raises(ConversionError, match=r"ids \[1, 2\] share the text 'lesion'"):
        _convert(folder)
    result = _convert(folder, merge_same_text=True)
    record = result.records[0]
    assert record["text"] == ["lesion", "vessel"] and record["instance_ids"] == [[1, 2], [3]]
    masks = decode_record_masks(record, H, W)
    assert np.array_equal(masks[0], np.isin(_ids_a(), [1, 2]))
    assert result.exact


def test_empty_id_mask_is_an_error_unless_skipped(folder: Path):
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(folder / "masks" / "0002.png")
    with pytest.raises(ConversionError, match=r"0002\.png \(image .*\) holds no id"):
        _convert(folder)
    result = _convert(folder, skip_empty=True)
    assert [r["image"] for r in result.records] == ["0001.jpg"]
    assert result.empty == [str(folder / "masks" / "0002.png")]


def test_map_ids_found_in_no_mask_are_noted(folder: Path):
    (folder / "ids.json").write_text(json.dumps({"1": "a", "2": "b", "3": "c", "9": "never"}))
    report = format_report(_convert(folder))
    assert "ID MAP id 9 ('never') occurs in no mask" in report


def test_ask_together_writes_one_turn_per_record(folder: Path):
    records = ask_together(_convert(folder).records)
    assert records[0]["turns"] == [[0, 1, 2]] and records[1]["turns"] == [[0, 1]]
    with pytest.raises(ConversionError, match="already has turns"):
        ask_together(records)


def _tool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "masks_to_annotations.py"), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_tool_end_to_end_with_one_question(folder: Path):
    out = folder / "annotations.json"
    done = _tool(
        "--images", folder / "images", "--masks", folder / "masks", "--instance-ids",
        "--id-texts", folder / "ids.json", "--mask-pattern", "{stem}.png", "--one-question",
        "--max-foreground", "0.9", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "EXACT" in done.stdout
    assert f"wrote {out}: 2 records, 5 objects in 2 questions" in done.stdout
    records = load_annotations(out, folder / "images", cache_file=None)
    assert records[0]["turns"] == [[0, 1, 2]]
    assert np.array_equal(reconstruct_ids(records[0], H, W), _ids_a().astype(np.int64))

    (folder / "ids.json").write_text(json.dumps({"1": "optic disc"}))
    failed = _tool(
        "--images", folder / "images", "--masks", folder / "masks", "--instance-ids",
        "--id-texts", folder / "ids.json", "--mask-pattern", "{stem}.png", "--out", folder / "x.json",
    )  # fmt: skip
    assert failed.returncode == 1
    assert "0001.png: id 2" in failed.stderr and "0001.png: id 3" in failed.stderr
    assert not (folder / "x.json").exists()


# --- the other way: per-[SEG] probabilities -> one id image ------------------------------------------
def test_probs_to_ids_takes_the_most_probable_object_above_the_threshold():
    probs = np.zeros((3, 2, 3), dtype=np.float32)
    probs[0] = [[0.9, 0.6, 0.1], [0.0, 0.0, 0.0]]
    probs[1] = [[0.2, 0.7, 0.1], [0.8, 0.0, 0.0]]
    probs[2] = [[0.0, 0.0, 0.4], [0.8, 0.0, 0.6]]
    assert probs_to_ids(probs, 0.5).tolist() == [[1, 2, 0], [2, 0, 3]]  # tie (0.8, 0.8): the first
    assert probs_to_ids(probs, 0.5, ids=[300, 7, 65535]).tolist() == [[300, 7, 0], [7, 0, 65535]]
    with pytest.raises(ValueError, match="distinct positive"):
        probs_to_ids(probs, 0.5, ids=[1, 1, 2])


@pytest.mark.parametrize("name, top", [("a.png", 200), ("b.png", 40000), ("c.tif", 65535)])
def test_save_id_image_is_lossless(tmp_path: Path, name: str, top: int):
    ids = np.zeros((H, W), dtype=np.int64)
    ids[3:9, 3:9] = top
    ids[20:25, 20:40] = 1
    path = save_id_image(ids, tmp_path / name)
    assert np.array_equal(read_instance_ids(path), ids)
    with Image.open(path) as im:
        assert im.mode == ("L" if top <= 255 else "I;16")


def test_save_id_image_refuses_a_lossy_format(tmp_path: Path):
    ids = np.zeros((H, W), dtype=np.int64)
    ids[3:9, 3:9] = 300
    with pytest.raises(ValueError, match="need a 16-bit format"):
        save_id_image(ids, tmp_path / "x.jpg")
