"""Every InternVL-based Sa2VA family on a tiny folder in its official layout (``hf_fixture.FAMILIES``):
strict load, export -> reload bit-exact, training moves exactly the trainable tensors, prompt ids equal the
official tokenisation (inference and training), prediction through ``Sa2VAPredictor.from_hf``.

Families: ``qwen2`` (Sa2VA-1B / -4B), ``internlm2`` (Sa2VA-8B / -26B), ``internvl3`` (Sa2VA-InternVL3-2B /
8B / 14B).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file
from torch import nn
from xtuner.dataset.map_fns import template_map_fn
from xtuner.dataset.utils import encode_fn, get_bos_eos_token_ids
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.checkpoint.hf_sa2va import TOOLKIT_SECTION, export_hf_folder
from projects.sa2va.datasets.image_processing import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from projects.sa2va.datasets.prompt import prefix_ids
from projects.sa2va.inference.predictor import Sa2VAPredictor
from projects.sa2va.models.internlm2_tokenizer import INTERNLM2_AUTO_MAP, InternLM2Tokenizer
from projects.sa2va.models.tokenizer import load_tokenizer
from tests.checkpoint.hf_fixture import TEMPLATES, model_cfg, official_key, write_official_folder
from tests.models.test_sa2va_training import NO_GRAD_TRAINABLE, batch_of, train_steps
from tests.tiny import TINY_MODEL_CFG, build_tiny_dataset, tiny_processor

FAMILIES = ("qwen2", "internlm2", "internvl3")
QUESTION = "Please segment the blood vessel."


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {fam: write_official_folder(root / fam, fam, seed=3) for fam in FAMILIES}


def build(folder: Path, family: str, seed: int = 0, **overrides):
    cfg = model_cfg(folder, family)
    cfg.model.update(overrides)
    torch.manual_seed(seed)
    return BUILDER.build(cfg.model), cfg


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def dataset(folder: Path, family: str, **overrides):
    cfg = Config.fromfile(str(TINY_MODEL_CFG))
    template = overrides.pop("template", PROMPT_TEMPLATE[TEMPLATES[family]])
    tok = dict(type=load_tokenizer, path=str(folder))
    return build_tiny_dataset(
        cfg, processor=tiny_processor(cfg, tokenizer=tok, template=template), **overrides
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_strict_load_copies_every_tensor(folders, family):
    model, _ = build(folders[family], family, seed=5, trainable=dict(llm="frozen"))  # no LoRA: plain names
    model_sd = {official_key(k): v for k, v in nn.Module.state_dict(model).items()}
    files = folder_tensors(folders[family])
    assert set(files) == set(model_sd)
    for k, v in files.items():
        assert torch.equal(model_sd[k], v), k


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_and_template_come_from_the_family(folders, family):
    model, _ = build(folders[family], family)
    tok = model.tokenizer
    assert model.mllm.template == TEMPLATES[family]
    if family == "internlm2":
        assert isinstance(tok, InternLM2Tokenizer) and prefix_ids(tok) == [1] == [tok.bos_token_id]
    else:
        assert type(tok).__name__ == "Qwen2TokenizerFast" and prefix_ids(tok) == []
    # The training rule (xtuner's get_bos_eos_token_ids) gives the same prefix as the tokenizer itself.
    assert get_bos_eos_token_ids(tok)[0] == prefix_ids(tok)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_moves_exactly_the_trainable_tensors(folders, family):
    folder = folders[family]
    model, _ = build(folder, family, seed=1)
    batch = batch_of(dataset(folder, family, objects_per_image=2), [0, 1])
    if family == "internlm2":
        assert bool((batch.input_ids[:, 0] == 1).all())  # every conversation starts with <s>
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Two steps, weight decay 0: LoRA B starts at 0, so A gets a gradient from the second step on.
    got_grad: set[str] = set()
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
    train_steps(model, batch_of(dataset(src, family, objects_per_image=1), [0]), steps=2, lr=1e-2)
    first = tmp_path / "first"
    export_hf_folder(model, first, max_shard_size="200KB")
    reloaded, _ = build(first, family, seed=7)  # LoRA applied again (B = 0): merging adds exact zeros
    second = tmp_path / "second"
    export_hf_folder(reloaded, second, max_shard_size="200KB")
    a, b = folder_tensors(first), folder_tensors(second)
    assert a.keys() == b.keys() == folder_tensors(src).keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    out_cfg = json.loads((first / "config.json").read_text())
    # The fixture's tiny SAM2 is not the official Hiera-L: the export describes it in its own section.
    assert out_cfg.pop(TOOLKIT_SECTION) == {"grounding_encoder": model.grounding_encoder.build_settings}
    assert out_cfg == src_cfg  # same vocabulary, template and family fields as the official source
    # The tokenizer files keep the family's class and remote-code map, and encode the same.
    src_tok, out_tok = (json.loads((d / "tokenizer_config.json").read_text()) for d in (src, first))
    assert out_tok["tokenizer_class"] == src_tok["tokenizer_class"]
    assert out_tok.get("auto_map") == src_tok.get("auto_map")
    if family == "internlm2":
        assert out_tok["auto_map"] == INTERNLM2_AUTO_MAP and (first / "tokenizer.model").is_file()
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nPlease segment the vein.<|im_end|>\nSure, [SEG]."
    assert load_tokenizer(first)(text)["input_ids"] == load_tokenizer(src)(text)["input_ids"]


@pytest.fixture(scope="module")
def predictors(folders) -> dict[str, Sa2VAPredictor]:
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    return {
        fam: Sa2VAPredictor.from_hf(
            folders[fam],
            cfg_options={"model.grounding_encoder.overrides": tiny.tiny_sam2_overrides},
            max_tiles=2,
        )
        for fam in FAMILIES
    }


def _image_string(num_image_token: int, tiles: int) -> str:
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * tiles) + IMG_END_TOKEN


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_equal_the_official_predict_forward(predictors, family):
    """Official ``predict_forward``: ``<image>`` -> image tokens in the text, the template's INSTRUCTION,
    ``tokenizer.encode(text)`` (special tokens added)."""
    p = predictors[family]
    tok = p.tokenizer
    assert p.template == dict(PROMPT_TEMPLATE[TEMPLATES[family]])
    for tiles in (1, 3):
        text = ("<image>\n" + QUESTION).replace("<image>", _image_string(p.num_image_token, tiles))
        official = tok.encode(p.template["INSTRUCTION"].format(input=text, round=1, bot_name="BOT"))
        assert p.build_prompt_ids(QUESTION, tiles) == official
        assert (official[0] == 1) == (family == "internlm2")


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_through_from_hf(predictors, family):
    p = predictors[family]
    assert p.template["INSTRUCTION"] == PROMPT_TEMPLATE[TEMPLATES[family]]["INSTRUCTION"]
    pred = p.predict([np.zeros((48, 64, 3), dtype=np.uint8)], QUESTION, max_new_tokens=3)[0]
    n = pred.token_ids.count(p.seg_token_id)
    assert pred.probs.shape == (n, 48, 64) and 1 <= len(pred.token_ids) <= 3


def _official_conversation(ds, template, index: int, num_tiles: int, system: str | None) -> dict:
    """xtuner's template_map_fn + encode_fn (the official training tokenisation) of sample ``index``."""
    objects, wording, _ = ds.sample_plan(index)
    texts = ds.record(index)["text"]
    conversation = []
    for turn, (obj, (qi, ai)) in enumerate(zip(objects, wording)):
        question = ds.question_templates[qi].format(text=texts[obj])
        if turn == 0:
            question = _image_string(ds.num_image_token, num_tiles) + "\n" + question
        entry = {"input": question, "output": ds.answer_templates[ai]}
        if turn == 0 and system:
            entry["system"] = system
        conversation.append(entry)
    example = template_map_fn({"conversation": conversation}, template=template)
    return encode_fn(example, ds.tokenizer, max_length=10**6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "template_name, system",
    [(None, None), (None, "You are a helpful assistant."), ("vicuna", None)],
    ids=["family_template", "with_system", "suffix_not_eos"],
)
def test_training_conversation_equals_the_official_tokenisation(folders, family, template_name, system):
    template = PROMPT_TEMPLATE[template_name or TEMPLATES[family]]
    ds = dataset(folders[family], family, template=template, objects_per_image=3, system=system)
    for index in range(3):
        for tiles in (1, 2):
            objects, wording, _ = ds.sample_plan(index)
            texts = [ds.record(index)["text"][o] for o in objects]
            ids, labels = ds.conversation(texts, wording, tiles * ds.num_image_token)
            official = _official_conversation(ds, template, index, tiles, system)
            assert ids == official["input_ids"]
            assert labels == official["labels"]
    assert ds.lengths[:2] == [len(ds[i]["input_ids"]) for i in range(2)]
