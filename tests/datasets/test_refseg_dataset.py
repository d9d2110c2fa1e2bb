"""RefSegDataset: conversation layout, labels, the 5-object rule, determinism, errors; and the collate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.special_tokens import IMG_CONTEXT_TOKEN
from tests.tiny import DATA_ROOT, build_tiny_dataset, tiny_processor


def decode(ds, ids) -> str:
    return ds.tokenizer.decode(ids)


def test_conversation_layout_and_labels(tiny_dataset):
    ds = tiny_dataset
    item = ds[0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    text = decode(ds, ids)
    # one image block with 64 context tokens (tiny ViT: 224 px -> 16x16 patches -> 64 after the shuffle)
    assert text.count("<img>") == 1 and text.count("</img>") == 1
    assert (
        ids.count(ds.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)) == 64 * item["pixel_values"].shape[0]
    )
    assert text.startswith("<|im_start|>user\n<img>")
    assert text.count("<|im_start|>user\n") == 5 and text.count("[SEG]") == 5
    # labels: only assistant answers and their <|im_end|>
    supervised = decode(ds, [t for t, lab in zip(ids, labels) if lab != -100])
    assert supervised.count("[SEG]") == 5 and supervised.count("<|im_end|>") == 5
    assert "user" not in supervised and "<img>" not in supervised and "vessel" not in supervised
    assert all(lab in (-100, t) for t, lab in zip(ids, labels))


def test_tensors_and_masks(tiny_dataset):
    item = tiny_dataset[0]
    assert item["pixel_values"].shape == (1, 3, 224, 224)  # 512x512 -> one tile
    assert item["g_pixel_values"].shape == (3, 256, 256)
    # uint8 pixels by default (normalised on the device); float32 = the same values normalised here
    assert item["pixel_values"].dtype == torch.uint8 and item["g_pixel_values"].dtype == torch.uint8
    assert item["masks"].shape == (5, 512, 512) and item["masks"].dtype == torch.uint8
    # CHASE records have one object: cyclic repeat gives 5 identical masks
    assert all(torch.equal(item["masks"][0], m) for m in item["masks"])
    assert item["texts"] == ["blood vessel"] * 5


def test_dynamic_tiling_adds_tiles_and_context_tokens(tiny_model_and_cfg):
    ds = build_tiny_dataset(
        tiny_model_and_cfg[1], processor=tiny_processor(tiny_model_and_cfg[1], dict(max_tiles=12))
    )
    item = ds[0]
    # 512x512 at 224-px tiles: a 3x3 grid + thumbnail (InternVL's rule)
    assert item["pixel_values"].shape[0] == 10
    assert item["input_ids"].tolist().count(ds.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)) == 10 * 64


def test_object_choice_subset_and_repeat(tiny_dataset):
    ds = tiny_dataset
    rng = np.random.default_rng(0)
    sub = ds.choose_objects(8, rng)
    assert len(sub) == 5 and len(set(sub)) == 5 and all(0 <= i < 8 for i in sub)
    rep = ds.choose_objects(2, np.random.default_rng(1))
    # cyclic: a permutation of the 2 objects, repeated
    assert sorted(rep[:2]) == [0, 1] and rep == [rep[0], rep[1], rep[0], rep[1], rep[0]]


def test_items_are_deterministic_per_index(tiny_model_and_cfg):
    ds = build_tiny_dataset(tiny_model_and_cfg[1], repeats=3)
    assert len(ds) == 60
    a, b = ds[7], ds[7]
    assert torch.equal(a["input_ids"], b["input_ids"])
    # a repeat of the same record may word its questions differently, but shows the same image
    c = ds[27]
    assert c["image_id"] == a["image_id"] and torch.equal(c["g_pixel_values"], a["g_pixel_values"])


def test_eval_mode_uses_all_objects_in_order_with_fixed_wording(tiny_model_and_cfg):
    ds = build_tiny_dataset(tiny_model_and_cfg[1], objects_per_image=None, random_templates=False)
    item = ds[0]
    assert item["masks"].shape[0] == 1
    assert "Please segment the blood vessel." in decode(ds, item["input_ids"].tolist())


def test_too_long_sequence_is_an_error_naming_the_record(tiny_model_and_cfg):
    ds = build_tiny_dataset(tiny_model_and_cfg[1], max_length=50)
    with pytest.raises(ValueError, match=r"record 0 \(Image_01L\.jpg\): \d+ tokens > max_length=50"):
        ds[0]


def test_bad_record_fails_at_load_time_naming_file_record_and_field(tmp_path, tiny_model_and_cfg):
    records = json.loads((DATA_ROOT / "annotations_train.json").read_text())[:2]
    records[1]["text"] = []
    ann = tmp_path / "bad.json"
    ann.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"bad\.json: record 1 .*text"):
        build_tiny_dataset(tiny_model_and_cfg[1], ann_file=str(ann))


def test_float32_pixel_format_equals_uint8_normalised(tiny_model_and_cfg):
    from projects.sa2va.pixels import normalize_pixels

    cfg = tiny_model_and_cfg[1]
    u8, f32 = build_tiny_dataset(cfg)[3], build_tiny_dataset(cfg, pixel_format="float32")[3]
    assert f32["pixel_values"].dtype == torch.float32
    for key in ("pixel_values", "g_pixel_values"):
        assert torch.equal(normalize_pixels(u8[key]), f32[key])
    with pytest.raises(ValueError, match="pixel_format='float32'"):
        build_tiny_dataset(cfg, processor=tiny_processor(cfg, sam2_resample="bilinear"))
    with pytest.raises(ValueError, match="'uint8' or 'float32'"):
        build_tiny_dataset(cfg, pixel_format="fp16")


def test_bad_template_arguments_are_rejected(tiny_model_and_cfg):
    with pytest.raises(ValueError, match="exactly one"):
        build_tiny_dataset(tiny_model_and_cfg[1], answer_templates=["Sure."])
    with pytest.raises(ValueError, match="placeholder"):
        build_tiny_dataset(tiny_model_and_cfg[1], question_templates=["Segment it."])


def test_collate_pads_right_and_concatenates(tiny_dataset):
    items = [tiny_dataset[0], tiny_dataset[1]]
    # make lengths differ
    items[1] = dict(items[1], input_ids=items[1]["input_ids"][:-3], labels=items[1]["labels"][:-3])
    batch = sa2va_collate(items)["data"]
    n0, n1 = len(items[0]["input_ids"]), len(items[1]["input_ids"])
    assert batch.input_ids.shape == (2, max(n0, n1))
    assert batch.attention_mask[1].sum() == n1 and batch.attention_mask[0].sum() == n0
    assert (batch.labels[1, n1:] == -100).all()
    assert (batch.input_ids[1, n1:] == tiny_dataset.pad_token_id).all()
    assert batch.pixel_values.shape[0] == sum(batch.num_tiles) == 2
    assert batch.g_pixel_values.shape == (2, 3, 256, 256)
    assert [m.shape[0] for m in batch.masks] == [5, 5]
    assert batch.image_ids == ["Image_01L.jpg", "Image_01R.jpg"]


def test_validated_fast_rle_decoding_equals_the_checked_decoder():
    from projects.sa2va.datasets.annotations import decode_record_masks, load_annotations

    records = load_annotations(DATA_ROOT / "annotations.json", DATA_ROOT / "images")
    for rec in records:
        slow = decode_record_masks(rec, 512, 512)
        fast = decode_record_masks(rec, 512, 512, validated=True)
        assert fast.dtype == np.bool_ and np.array_equal(slow, fast), rec["image"]
