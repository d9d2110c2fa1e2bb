"""Sa2VAPredictor on the tiny model (overfit in ``conftest.py`` so that it answers with [SEG])."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.image_processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAM2_INFER_MEAN,
    SAM2_INFER_STD,
    InternVLImageProcessor,
    image_token_string,
)
from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.datasets.refseg import RefSegDataset
from projects.sa2va.inference.predictor import Sa2VAPredictor, load_threshold

SEG = "[SEG]"
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Please segment the blood vessel."
ONE_SEG = "Sure, [SEG]."


def _dataset(overfit, **kw) -> RefSegDataset:
    """The bundled CHASE_DB1 records, one object each, fixed wording, the test predictor's processor."""
    assert overfit.predictor.template == dict(PROMPT_TEMPLATE.qwen_chat)
    return RefSegDataset(
        ann_file=str(ROOT / "data/chase_db1/annotations.json"),
        image_root=str(ROOT / "data/chase_db1/images"),
        processor=overfit.predictor.processor,
        objects_per_image=1,
        random_templates=False,
        question_templates=("Please segment the {text}.",),
        answer_templates=(ONE_SEG,),
        **kw,
    )


def _index_of(ds: RefSegDataset, image: str) -> int:
    return next(i for i, r in enumerate(ds.records) if r["image"] == image)


# --- prompt ---------------------------------------------------------------------------------------
def test_prompt_ids_match_official_string_and_dataset(overfit) -> None:
    p = overfit.predictor
    ids = p.build_prompt_ids(PROMPT, num_tiles=3)
    # The official code replaces <image> in the text and encodes the whole string.
    official = (
        "<|im_start|>user\n" + image_token_string(3, p.num_image_token) + "\n" + PROMPT + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert ids == p.tokenizer.encode(official, add_special_tokens=False)
    assert p.build_prompt_ids("<image>\n" + PROMPT, 3) == ids  # not prepended twice
    ds = _dataset(overfit)
    item = ds[_index_of(ds, "Image_01L.jpg")]
    n_tiles = item["pixel_values"].shape[0]
    prompt = p.build_prompt_ids(PROMPT, n_tiles)
    assert item["input_ids"][: len(prompt)].tolist() == prompt


# --- generation and masks -------------------------------------------------------------------------
def test_generates_answers_and_one_mask_per_seg(overfit) -> None:
    p = overfit.predictor
    keys = list(overfit.images)
    preds = p.predict([overfit.images[k] for k in keys], [overfit.prompts[k] for k in keys])
    for k, pred in zip(keys, preds):
        h, w = overfit.images[k].shape[:2]
        assert pred.text == overfit.answers[k]
        n = pred.text.count(SEG)
        assert n >= 1
        assert pred.num_masks == n == pred.token_ids.count(p.seg_token_id)
        assert pred.probs.shape == pred.masks.shape == (n, h, w)
        assert pred.probs.dtype == np.float32 and pred.masks.dtype == np.bool_
        assert pred.probs.min() >= 0.0 and pred.probs.max() <= 1.0
        np.testing.assert_array_equal(pred.masks, pred.probs > 0.5)
        assert pred.threshold == 0.5
        assert pred.seg_embeds.shape == (n, p.model.grounding_encoder.hidden_dim)
        assert pred.token_ids[-1] in p.stop_token_ids  # stopped at <|im_end|>
    assert preds[2].num_masks == 2  # the crop's two-[SEG] answer
    assert not np.allclose(preds[2].probs[0], preds[2].probs[1])  # two different embeddings


def test_batch_equals_single_images_left_padding(overfit) -> None:
    p = overfit.predictor
    keys = ["crop", "01L"]  # 3 tiles vs 1 tile: prompts of different lengths
    images = [overfit.images[k] for k in keys]
    prompts = [overfit.prompts[k] for k in keys]
    lengths = [len(p.preprocess(im, q).prompt_ids) for im, q in zip(images, prompts)]
    assert lengths[0] != lengths[1]
    batch = p.predict(images, prompts)
    for im, q, b in zip(images, prompts, batch):
        single = p.predict([im], [q])[0]
        assert b.token_ids == single.token_ids
        assert b.text == single.text
        np.testing.assert_allclose(b.seg_embeds, single.seg_embeds, atol=1e-5)
        np.testing.assert_allclose(b.probs, single.probs, atol=1e-5)


def test_no_seg_generated_gives_empty_masks(overfit) -> None:
    pred = overfit.predictor.predict([overfit.images["01L"]], PROMPT, max_new_tokens=1)[0]
    assert len(pred.token_ids) == 1 and pred.text == "Sure"
    assert pred.probs.shape == pred.masks.shape == (0, 512, 512)
    assert pred.seg_embeds.shape[0] == 0


# --- the [SEG] embedding is the training one ------------------------------------------------------
def test_seg_embedding_and_probs_equal_training_forward(overfit) -> None:
    p = overfit.predictor
    ds = _dataset(overfit)  # training preprocessing: exact ImageNet constants, PIL bicubic to SAM2
    item = ds[_index_of(ds, "Image_01L.jpg")]
    batch = sa2va_collate([item])["data"]
    model = p.model
    with torch.no_grad():
        out = model.forward_tensors(batch)
        trained = model.predict(batch)[0]
    exact = Sa2VAPredictor(model, processor=p.processor, official_normalisation=False)
    pred = exact.predict([overfit.images["01L"]], PROMPT)[0]
    seq = exact.preprocess(overfit.images["01L"], PROMPT).prompt_ids + pred.token_ids
    assert item["input_ids"][: len(seq)].tolist() == seq  # same tokens as the training sequence
    assert out["seg_counts"] == [1]
    np.testing.assert_allclose(pred.seg_embeds, out["seg_embeds"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(pred.probs, trained["probs"].numpy(), atol=1e-6, rtol=0)


def test_seg_embedding_equals_generate_hidden_states(overfit) -> None:
    """What the official predict_forward does (hidden states of generate) agrees up to numerics."""
    p = overfit.predictor
    prep = p.preprocess(overfit.images["crop"], overfit.prompts["crop"])
    mllm = p.model.mllm
    with torch.no_grad():
        ids = torch.tensor([prep.prompt_ids])
        embeds = mllm.embed(ids, mllm.project_vit(mllm.encode_vit(prep.pixel_values)))
        out = mllm.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=p.stop_token_ids,
            pad_token_id=p.pad_token_id,
            use_cache=True,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        seq = out.sequences[0]
        hidden = torch.cat([step[-1][0] for step in out.hidden_states])  # prompt + generated[:-1]
        fed = seq[:-1]
        official = p.model.text_hidden_fcs(hidden[-len(fed) :][fed == p.seg_token_id])
    pred = p.predict([overfit.images["crop"]], [overfit.prompts["crop"]])[0]
    assert pred.token_ids == seq.tolist()
    assert official.shape[0] == pred.num_masks == 2
    np.testing.assert_allclose(pred.seg_embeds, official.numpy(), atol=1e-4)


# --- preprocessing --------------------------------------------------------------------------------
def test_official_normalisation_only_changes_sam2_input(overfit) -> None:
    p = overfit.predictor
    assert p.official_normalisation
    exact = Sa2VAPredictor(p.model, processor=p.processor, official_normalisation=False)
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    a, b = p.preprocess(image, PROMPT), exact.preprocess(image, PROMPT)
    torch.testing.assert_close(a.pixel_values, b.pixel_values)
    for c in range(3):
        assert a.g_pixel_values[c, 0, 0].item() == pytest.approx(
            (128 / 255 - SAM2_INFER_MEAN[c]) / SAM2_INFER_STD[c], abs=1e-6
        )
        assert b.g_pixel_values[c, 0, 0].item() == pytest.approx(
            (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6
        )
    assert a.size == (40, 60)


# --- thresholds -----------------------------------------------------------------------------------
def test_threshold_file_is_honoured(overfit, tmp_path: Path) -> None:
    p = overfit.predictor
    base = p.predict([overfit.images["01L"]], PROMPT)[0]
    t = float(np.quantile(base.probs, 0.9))  # a threshold that changes the mask
    path = tmp_path / "best_threshold.json"
    path.write_text(json.dumps({"threshold": t}))
    assert load_threshold(path) == t
    tuned = Sa2VAPredictor(p.model, processor=p.processor, threshold=load_threshold(path))
    pred = tuned.predict([overfit.images["01L"]], PROMPT)[0]
    assert pred.threshold == t
    np.testing.assert_array_equal(pred.masks, pred.probs > t)
    assert pred.masks.sum() != base.masks.sum()
    override = tuned.predict([overfit.images["01L"]], PROMPT, threshold=0.5)[0]
    np.testing.assert_array_equal(override.masks, base.masks)
    (tmp_path / "report.json").write_text(json.dumps({"best_threshold": 0.3}))
    assert load_threshold(tmp_path / "report.json") == 0.3


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('{"thr": 0.4}', "expected a JSON object with 'threshold'"),
        ('{"threshold": 1.5}', r"number in \[0, 1\]"),
        ('{"threshold": true}', r"number in \[0, 1\]"),
    ],
)
def test_threshold_file_errors_name_the_file(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "thr.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        load_threshold(path)
    assert str(path) in str(err.value)


# --- input errors ---------------------------------------------------------------------------------
def test_input_errors(overfit) -> None:
    p = overfit.predictor
    im = overfit.images["01L"]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        p.predict([im, im], [PROMPT])
    with pytest.raises(ValueError, match=r"images\[1\].*uint8"):
        p.predict([im, im.astype(np.float32)], PROMPT)
    with pytest.raises(TypeError, match="sequence of images"):
        p.predict(im, PROMPT)
    with pytest.raises(ValueError, match="no images"):
        p.predict([], PROMPT)
    with pytest.raises(ValueError, match="max_new_tokens"):
        p.predict([im], PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="threshold"):
        p.predict([im], PROMPT, threshold=2.0)
    parts = dict(tokenizer=p.tokenizer, image_processor=p.image_processor, sam2_size=p.sam2_size)
    with pytest.raises(KeyError, match="no_such_template"):
        Sa2VAPredictor(p.model, processor=dict(type=Sa2VAProcessor, template="no_such_template", **parts))
    # A processor that does not fit the model is refused, naming what differs.
    with pytest.raises(ValueError, match="SAM2 input 1024 px, the model's 256 px"):
        Sa2VAPredictor(p.model, processor=Sa2VAProcessor(template="qwen_chat", **dict(parts, sam2_size=1024)))
    tiles_448 = InternVLImageProcessor(tile_size=448, num_image_token=64)
    with pytest.raises(ValueError, match="448 px tiles, the vision model takes 224 px"):
        Sa2VAPredictor(
            p.model, processor=Sa2VAProcessor(template="qwen_chat", **dict(parts, image_processor=tiles_448))
        )
    with pytest.raises(ValueError, match="256 image tokens per tile, the model 64"):
        Sa2VAPredictor(
            p.model,
            processor=Sa2VAProcessor(
                template="qwen_chat", **dict(parts, image_processor=InternVLImageProcessor())
            ),
        )
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        Sa2VAPredictor.from_config(ROOT / "missing.py")


# --- from an official-layout HF folder ------------------------------------------------------------
def test_from_hf_folder_loads_weights_and_folder_settings(tmp_path: Path) -> None:
    from mmengine.config import Config
    from safetensors import safe_open

    from tests.checkpoint.hf_fixture import write_official_folder

    folder = write_official_folder(tmp_path / "hf", "qwen2", shards=1)
    tiny = Config.fromfile(str(ROOT / "projects/sa2va/configs/_base_/model_tiny.py"))
    p = Sa2VAPredictor.from_hf(
        folder, cfg_options={"model.grounding_encoder.overrides": tiny.tiny_sam2_overrides}, max_tiles=1
    )
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        expected = f.get_tensor("text_hidden_fcs.0.weight")
    torch.testing.assert_close(p.model.text_hidden_fcs[0].weight, expected, rtol=0, atol=0)
    assert p.template["INSTRUCTION"] == PROMPT_TEMPLATE.qwen_chat["INSTRUCTION"]  # the folder's template
    assert p.image_processor.use_thumbnail and p.image_processor.max_tiles == 1  # folder's; override wins
    assert p.autocast_dtype == torch.bfloat16  # bf16 frozen parts next to fp32 trainable ones
    pred = p.predict([np.zeros((48, 64, 3), dtype=np.uint8)], PROMPT, max_new_tokens=4)[0]
    n = pred.token_ids.count(p.seg_token_id)
    assert pred.probs.shape == (n, 48, 64) and len(pred.token_ids) <= 4
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Sa2VAPredictor.from_hf(tmp_path / "nowhere")
