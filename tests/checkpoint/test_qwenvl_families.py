"""The Qwen-VL Sa2VA families on a tiny folder in their official layout (``qwenvl_fixture``): strict load
(logits equal transformers' own model), export -> reload bit-exact, training moves exactly the trainable
tensors, prompt ids equal the official tokenisation, prediction through ``Sa2VAPredictor.from_hf``.

Families: ``qwen3_vl`` (Sa2VA-Qwen3-VL-2B / -4B), ``qwen2_5_vl`` (Sa2VA-Qwen2_5-VL-3B / -7B).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.checkpoint.hf_sa2va import export_hf_folder, merged_model_tensors
from projects.sa2va.checkpoint.key_tables import QWENVL_HF_KEY_TABLE
from projects.sa2va.datasets.image_io import read_image
from projects.sa2va.datasets.qwenvl_processing import SA2VA_MAX_PIXELS, SA2VA_MIN_PIXELS, QwenVLImageProcessor
from projects.sa2va.inference.predictor import Sa2VAPredictor
from tests.checkpoint.qwenvl_fixture import (
    AUTO_MAP,
    FAMILIES,
    REMOTE_CODE,
    SPECS,
    folder_tensors,
    model_cfg,
    processor_kwargs,
    tiny_cfg,
    transformers_model,
    write_official_folder,
)
from tests.models.test_sa2va_training import NO_GRAD_TRAINABLE, batch_of, train_steps
from tests.tiny import DATA_ROOT, build_tiny_dataset

QUESTION = "Please segment the blood vessel."


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwenvl_families")
    return {fam: write_official_folder(root / fam, fam, seed=3) for fam in FAMILIES}


def build(folder: Path, family: str, seed: int = 0, **overrides):
    cfg = model_cfg(folder, family)
    cfg.model.update(overrides)
    torch.manual_seed(seed)
    return BUILDER.build(cfg.model), cfg


def dataset(folder: Path, family: str, **overrides):
    cfg = model_cfg(folder, family)
    kwargs = dict(cfg.dataset_inputs)
    kwargs.update(overrides)
    return build_tiny_dataset(cfg, **kwargs)


def _image_inputs(folder: Path, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    proc = QwenVLImageProcessor(path=folder, **processor_kwargs(family))
    return proc(read_image(DATA_ROOT / "images" / "Image_01L.jpg"))


@pytest.mark.parametrize("family", FAMILIES)
def test_strict_load_copies_every_tensor_and_matches_transformers(folders, family):
    folder = folders[family]
    model, _ = build(folder, family, seed=5, trainable=dict(llm="frozen"))  # no LoRA: plain names
    model.eval()
    model_sd = {QWENVL_HF_KEY_TABLE.to_format(k): v for k, v in nn.Module.state_dict(model).items()}
    files = folder_tensors(folder)
    assert set(files) == set(model_sd)
    for k, v in files.items():
        assert torch.equal(model_sd[k], v), k

    # The same input through transformers' own model holding the folder's `model.*` weights.
    reference = transformers_model(folder, family)
    tok = model.tokenizer
    pixel_values, grid = _image_inputs(folder, family)
    n = int(grid.prod()) // 4
    text = (
        "<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * n
        + "<|vision_end|>\n"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\nSure, [SEG].<|im_end|>"
    )
    ids = torch.tensor([tok(text)["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits, hidden = model.mllm(
            input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=grid
        )
        ref = reference(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            output_hidden_states=True,
            use_cache=False,
        )
    assert torch.equal(logits, ref.logits)
    # The [SEG] feature is what the official code reads: output.hidden_states[-1].
    assert torch.equal(hidden, ref.hidden_states[-1])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("damage", ["renamed", "extra"])
def test_strict_load_names_a_wrong_key(folders, family, damage, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folders[family], bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    key = "model.model.visual.patch_embed.proj.weight"
    shard = bad / index["weight_map"][key]
    tensors = load_file(str(shard))
    if damage == "renamed":
        wrong = "model.model.vision.patch_embed.proj.weight"
        tensors[wrong] = tensors.pop(key)
        del index["weight_map"][key]
    else:
        wrong = "model.model.visual.extra_head.weight"
        tensors[wrong] = torch.zeros(2)
    index["weight_map"][wrong] = shard.name
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises((KeyError, ValueError)) as err:
        build(bad, family, trainable=dict(llm="frozen"))
    assert wrong in str(err.value)


def _role(name: str) -> str:
    """What a trainable parameter of the LoRA recipe is."""
    if "lora_A" in name or "lora_B" in name:
        return "lora"
    if ".modules_to_save." in name and any(m in name for m in ("embed_tokens", "lm_head")):
        return "copy"
    if name.startswith("grounding_encoder.sam2_model.sam_mask_decoder."):
        return "mask_decoder"
    if name.startswith("text_hidden_fcs."):
        return "text_hidden_fcs"
    return "other"


@pytest.mark.parametrize("family", FAMILIES)
def test_training_moves_exactly_the_trainable_tensors(folders, family):
    folder = folders[family]
    model, _ = build(folder, family, seed=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {_role(n) for n in trainable} == {"lora", "copy", "mask_decoder", "text_hidden_fcs"}
    assert sum(_role(n) == "copy" for n in trainable) == 2  # embed_tokens and lm_head copies
    frozen = [n for n, _ in model.named_parameters() if n not in trainable]
    assert any(n.startswith("mllm.vision_model.") for n in frozen)
    assert any("base_layer" in n for n in frozen)
    assert any(n.startswith("grounding_encoder.sam2_model.image_encoder.") for n in frozen)
    assert not any(n.startswith("mllm.vision_model.") for n in trainable)

    batch = batch_of(dataset(folder, family, objects_per_image=2), [0, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got_grad: set[str] = set()
    # Two steps, weight decay 0: LoRA B starts at 0, so A gets a gradient from the second step on.
    train_steps(model, batch, steps=2, weight_decay=0.0, got_grad=got_grad)
    candidates_changed = 0
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if not p.requires_grad:
            assert not changed, f"frozen tensor changed: {name}"
        elif any(s in name for s in NO_GRAD_TRAINABLE):
            assert name not in got_grad and not changed, name
        elif "output_hypernetworks_mlps." in name:  # only the best-IoU candidate per object gets a gradient
            assert changed == (name in got_grad), name
            candidates_changed += changed
        else:
            assert name in got_grad and changed, f"trainable tensor did not move: {name}"
    assert candidates_changed > 0
    assert any("lora_A" in n for n in got_grad) and any("lora_B" in n for n in got_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_reload_is_bit_exact(folders, family, tmp_path):
    src = folders[family]
    model, _ = build(src, family, seed=1)
    batch = batch_of(dataset(src, family, objects_per_image=1), [0])
    train_steps(model, batch, steps=2, lr=1e-2)
    first = tmp_path / "first"
    report = export_hf_folder(model, first, max_shard_size="200KB")
    assert len(report.shards) > 1
    a = folder_tensors(first)
    assert a.keys() == folder_tensors(src).keys()

    cfg = json.loads((first / "config.json").read_text())
    assert cfg["model_type"] == "sa2va_chat"
    assert cfg["architectures"] == ["Sa2VAChatModelQwen"]
    assert cfg["auto_map"] == AUTO_MAP
    assert cfg["template"] == "qwen_chat"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["text_config"]["vocab_size"] == len(model.tokenizer) == a["model.lm_head.weight"].shape[0]
    for name in REMOTE_CODE:
        assert (first / name).read_text() == (src / name).read_text()
    assert json.loads((first / "preprocessor_config.json").read_text()) == json.loads(
        (src / "preprocessor_config.json").read_text()
    )

    reloaded, _ = build(first, family, seed=7)  # LoRA applied again (B = 0): merging adds exact zeros
    second = tmp_path / "second"
    export_hf_folder(reloaded, second, max_shard_size="200KB")
    b = folder_tensors(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert cfg == json.loads((second / "config.json").read_text())

    model.eval()
    reloaded.eval()
    with torch.no_grad():
        trained = model(batch, mode="tensor")
        again = reloaded(batch, mode="tensor")
    assert trained["mask_logits"].shape[0] == 1
    torch.testing.assert_close(again["mask_logits"], trained["mask_logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_conversation_equals_the_official_tokenisation(folders, family):
    """Official training string per turn (template ``qwen_chat``, no system prompt): the first turn is
    ``<|im_start|>user\\n<|vision_start|>`` + ``<|image_pad|>`` * N +
    ``<|vision_end|>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`` (unlabelled), the answer +
    ``<|im_end|>`` (labelled), ``\\n`` (unlabelled)."""
    folder = folders[family]
    ds = dataset(folder, family, objects_per_image=3)
    assert dict(ds.template) == dict(PROMPT_TEMPLATE.qwen_chat)
    tok = ds.tokenizer
    for index in range(2):
        item = ds[index]
        grid = item["image_grid_thw"]
        n = int(grid.prod()) // 4
        assert item["pixel_values"].shape[0] == int(grid.prod())
        objects, wording, _ = ds.sample_plan(index)
        texts = ds.record(index)["text"]
        ids: list[int] = []
        labels: list[int] = []
        for turn, (obj, (qi, ai)) in enumerate(zip(objects, wording)):
            question = ds.question_templates[qi].format(text=texts[obj])
            image = "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>\n" if turn == 0 else ""
            q = tok(f"<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
            answer = tok(ds.answer_templates[ai] + "<|im_end|>")["input_ids"]
            sep = tok("\n")["input_ids"]
            ids += q + answer + sep
            labels += [-100] * len(q) + answer + [-100] * len(sep)
        assert item["input_ids"].tolist() == ids
        assert item["labels"].tolist() == labels
        assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == n
    assert ds.lengths[:2] == [len(ds[i]["input_ids"]) for i in range(2)]


def test_first_turn_with_the_fixed_wording(folders):
    """``Sure, [SEG].`` answer of the recipe, checked token by token on the first turn."""
    family = "qwen3_vl"
    ds = dataset(
        folders[family],
        family,
        objects_per_image=1,
        random_templates=False,
        question_templates=("Please segment {text} in this image.",),
        answer_templates=("Sure, [SEG].",),
    )
    tok = ds.tokenizer
    item = ds[0]
    n = int(item["image_grid_thw"].prod()) // 4
    text = ds.record(0)["text"][ds.sample_plan(0)[0][0]]
    prompt = (
        "<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * n
        + f"<|vision_end|>\nPlease segment {text} in this image.<|im_end|>\n<|im_start|>assistant\n"
    )
    q = tok(prompt)["input_ids"]
    answer = tok("Sure, [SEG].<|im_end|>")["input_ids"]
    assert answer[-1] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok.convert_tokens_to_ids("[SEG]") in answer
    assert item["input_ids"].tolist() == q + answer + tok("\n")["input_ids"]
    assert item["labels"].tolist() == [-100] * len(q) + answer + [-100]


@pytest.fixture(scope="module")
def predictors(folders) -> dict[str, Sa2VAPredictor]:
    return {
        fam: Sa2VAPredictor.from_hf(
            folders[fam],
            cfg_options={"model.grounding_encoder.overrides": tiny_cfg(fam).tiny_sam2_overrides},
        )
        for fam in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_builds_the_family(folders, predictors, family):
    p = predictors[family]
    assert type(p.model.mllm) is SPECS[family][0]
    assert p.template == dict(PROMPT_TEMPLATE.qwen_chat)
    # The folder's processor (patch size, mean / std) at the official Sa2VA pixel budget.
    proc = p.image_processor
    folder_proc = json.loads((folders[family] / "preprocessor_config.json").read_text())
    assert proc.patch_size == folder_proc["patch_size"]
    assert list(proc.hf.image_mean) == folder_proc["image_mean"]
    assert (proc.min_pixels, proc.max_pixels) == (SA2VA_MIN_PIXELS, SA2VA_MAX_PIXELS)
    # Weights equal the folder's at the build dtype (the folder's own torch_dtype, which from_hf follows;
    # LoRA starts with B = 0, so the merged weights are the loaded ones; trained copies are kept in float32).
    dtype = p.model.mllm.build_dtype
    folder_dtype = json.loads((folders[family] / "config.json").read_text())["torch_dtype"]
    assert dtype == getattr(torch, folder_dtype)
    files = folder_tensors(folders[family])
    entries = merged_model_tensors(p.model)
    assert {QWENVL_HF_KEY_TABLE.to_format(e.model_key) for e in entries} == set(files)
    for e in entries:
        want = files[QWENVL_HF_KEY_TABLE.to_format(e.model_key)].to(dtype)
        assert torch.equal(want, e.make().to(dtype)), e.model_key


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_equal_the_official_predict_forward(predictors, family):
    """Official ``predict_forward`` for the text ``<image>\\n{question}`` (no system block, as trained):
    ``<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n``, the processor expanding ``<|image_pad|>`` to ``N = grid.prod() // 4``."""
    p = predictors[family]
    tok = p.tokenizer
    image = np.full((300, 420, 3), 128, dtype=np.uint8)
    prepared = p.preprocess(image, QUESTION)
    n = int(prepared.image_grid_thw.prod()) // 4
    official = tok(
        "<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * n
        + "<|vision_end|>\n"
        + QUESTION
        + "<|im_end|>\n<|im_start|>assistant\n"
    )["input_ids"]
    assert prepared.prompt_ids == official
    assert prepared.pixel_values.shape[0] == int(prepared.image_grid_thw.prod())


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_through_from_hf(predictors, family):
    p = predictors[family]
    pred = p.predict([np.zeros((48, 64, 3), dtype=np.uint8)], QUESTION, max_new_tokens=3)[0]
    n = pred.token_ids.count(p.seg_token_id)
    assert pred.probs.shape == (n, 48, 64) and 1 <= len(pred.token_ids) <= 3
