"""Sa2VAProcessor: one input contract built from parts (tiny configs) or from an HF folder (family read from
its config.json); prompt ids equal the official tokenisation; slot counts known without decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.configs import config_path
from projects.sa2va.datasets.image_processing import (
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    InternVLImageProcessor,
    dynamic_tiles,
    internvl_pixel_values,
    sam2_pixel_values,
)
from projects.sa2va.datasets.processor import Sa2VAProcessor, hf_adapter
from projects.sa2va.datasets.qwenvl_processing import QwenVLImageProcessor
from projects.sa2va.models.internvl import InternLM2InternVL, Qwen2InternVL
from projects.sa2va.models.qwenvl import Qwen2_5_VLSa2VA, Qwen3VLSa2VA
from projects.sa2va.models.tokenizer import build_tiny_tokenizer, load_tokenizer
from tests.checkpoint import hf_fixture, qwenvl_fixture

QUESTION = "Please segment the blood vessel."


def tiny_processor(**image_kwargs) -> Sa2VAProcessor:
    return Sa2VAProcessor(
        tokenizer=dict(type=build_tiny_tokenizer),
        template="qwen_chat",
        image_processor=dict(type=InternVLImageProcessor, tile_size=224, **image_kwargs),
        sam2_size=256,
    )


def official_prompt(tok, template: dict, start: str, slot: str, end: str, slots: int) -> list[int]:
    """The official ``predict_forward``: image tokens written into the text, ``tokenizer.encode(text)``."""
    text = ("<image>\n" + QUESTION).replace("<image>", start + slot * slots + end)
    return tok.encode(template["INSTRUCTION"].format(input=text, round=1, bot_name="BOT"))


def test_internvl_image_processor_counts_match_the_tiles():
    ip = InternVLImageProcessor(tile_size=56, max_tiles=6)
    assert ip.num_image_token == 4  # (56 / 14 patches * 0.5)^2
    assert InternVLImageProcessor().num_image_token == 256
    assert InternVLImageProcessor(tile_size=224).num_image_token == 64
    rng = np.random.default_rng(0)
    for w, h in [(64, 64), (200, 64), (64, 300), (130, 97), (640, 480)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out = ip.preprocess(image)
        tiles = dynamic_tiles(image, max_num=6, tile_size=56)
        assert torch.equal(out.pixel_values, internvl_pixel_values(tiles))
        assert out.image_grid_thw is None
        assert out.slots == 4 * len(tiles) == ip.num_slots(w, h)
        assert ip.num_tiles(w, h) == len(tiles)
        raw = ip.preprocess(image, normalize=False).pixel_values
        assert raw.dtype == torch.uint8 and torch.equal(raw, internvl_pixel_values(tiles, normalize=False))


def test_internvl_image_processor_refuses_bad_settings():
    with pytest.raises(ValueError, match="min_num"):
        InternVLImageProcessor(min_tiles=3, max_tiles=2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        InternVLImageProcessor(tile_size=100)


def test_tiny_processor_prompt_equals_the_official_tokenisation():
    p = tiny_processor(max_tiles=1)
    tok = p.tokenizer
    assert p.template == dict(PROMPT_TEMPLATE.qwen_chat)
    for slots in (64, 128):
        official = official_prompt(tok, p.template, IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, slots)
        assert p.prompt_ids(QUESTION, slots) == official
    assert p.image_token_ids == tuple(
        tok.convert_tokens_to_ids([IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN])
    )
    assert p.pad_token_id == tok.pad_token_id


def test_turn_ids_put_the_image_in_the_first_turn_only():
    p = tiny_processor(max_tiles=1)
    q1, a1, sep = p.turn_ids(QUESTION, "Sure, [SEG].", first=True, slots=64)
    q2, a2, _ = p.turn_ids(QUESTION, "Sure, [SEG].", first=False, slots=64)
    ctx = p.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    assert q1.count(ctx) == 64 and ctx not in q2
    assert a1 == a2 == p.encode("Sure, [SEG]." + PROMPT_TEMPLATE.qwen_chat["SUFFIX"])  # SUFFIX_AS_EOS
    assert sep == p.encode(PROMPT_TEMPLATE.qwen_chat["SEP"])
    assert p.system_ids(None) == [] and p.system_ids("Be brief.") == p.encode(
        PROMPT_TEMPLATE.qwen_chat["SYSTEM"].format(system="Be brief.")
    )


def test_sam2_inputs_follow_the_size_resample_and_constants():
    p = tiny_processor()
    arr = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    assert torch.equal(p.sam2_inputs(arr), sam2_pixel_values(arr, size=256, resample="pil_bicubic"))
    assert p.sam2_inputs(arr, normalize=False).dtype == torch.uint8
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert torch.equal(
        p.sam2_inputs(arr, mean=mean, std=std),
        sam2_pixel_values(arr, size=256, resample="pil_bicubic", mean=mean, std=std),
    )


def test_processor_refuses_bad_input():
    with pytest.raises(KeyError, match="no_such_template"):
        Sa2VAProcessor(
            tokenizer=dict(type=build_tiny_tokenizer),
            template="no_such_template",
            image_processor=InternVLImageProcessor(),
        )
    with pytest.raises(ValueError, match="image_processor"):
        Sa2VAProcessor(tokenizer=dict(type=build_tiny_tokenizer), template="qwen_chat", image_processor=None)
    with pytest.raises(ValueError, match="sam2_resample"):
        Sa2VAProcessor(
            tokenizer=dict(type=build_tiny_tokenizer),
            template="qwen_chat",
            image_processor=InternVLImageProcessor(),
            sam2_resample="nearest",
        )


@pytest.mark.parametrize(
    "name", ["_base_/model_tiny", "_base_/model_tiny_qwen3vl", "_base_/model_tiny_qwen2_5vl"]
)
def test_tiny_config_processor_builds(name):
    cfg = Config.fromfile(str(config_path(name)))
    p = BUILDER.build(cfg.processor)
    assert isinstance(p, Sa2VAProcessor) and p.sam2_size == cfg.sam2_image_size
    kind = InternVLImageProcessor if name == "_base_/model_tiny" else QwenVLImageProcessor
    assert isinstance(p.image_processor, kind)


@pytest.fixture(scope="module")
def internvl_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("processor_internvl")
    return {fam: hf_fixture.write_official_folder(root / fam, fam, seed=1) for fam in ("qwen2", "internlm2")}


@pytest.mark.parametrize("family", ["qwen2", "internlm2"])
def test_from_pretrained_internvl_folder(internvl_folders, family):
    folder = internvl_folders[family]
    p = Sa2VAProcessor.from_pretrained(folder, max_tiles=2)
    assert hf_adapter(folder) is {"qwen2": Qwen2InternVL, "internlm2": InternLM2InternVL}[family]
    assert p.template == dict(PROMPT_TEMPLATE[hf_fixture.TEMPLATES[family]])
    ip = p.image_processor
    assert isinstance(ip, InternVLImageProcessor)
    assert (ip.tile_size, ip.num_image_token, ip.max_tiles) == (224, 64, 2)  # the tiny preset's ViT
    assert p.sam2_size == 1024 and type(p.tokenizer) is type(load_tokenizer(folder))
    slots = 3 * ip.num_image_token
    official = official_prompt(
        p.tokenizer, p.template, IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, slots
    )
    assert p.prompt_ids(QUESTION, slots) == official
    assert (official[0] == 1) == (family == "internlm2")  # InternLM2 <s>, no BOS for Qwen2


@pytest.fixture(scope="module")
def qwenvl_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("processor_qwenvl")
    return {
        fam: qwenvl_fixture.write_official_folder(root / fam, fam, seed=1) for fam in qwenvl_fixture.FAMILIES
    }


@pytest.mark.parametrize("family", qwenvl_fixture.FAMILIES)
def test_from_pretrained_qwenvl_folder(qwenvl_folders, family):
    folder = qwenvl_folders[family]
    budget = qwenvl_fixture.processor_kwargs(family)
    p = Sa2VAProcessor.from_pretrained(folder, **budget)
    assert hf_adapter(folder) is {"qwen3_vl": Qwen3VLSa2VA, "qwen2_5_vl": Qwen2_5_VLSa2VA}[family]
    assert isinstance(p.image_processor, QwenVLImageProcessor) and p.num_image_token == 1
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    out = p.image_inputs(image)
    patches, grid = QwenVLImageProcessor(path=folder, **budget)(image)
    assert torch.equal(out.pixel_values, patches) and torch.equal(out.image_grid_thw, grid)
    assert out.slots == p.num_slots(128, 96) == int(grid.prod()) // 4
    official = official_prompt(p.tokenizer, p.template, *QwenVLImageProcessor.image_tokens, out.slots)
    assert p.prompt_ids(QUESTION, out.slots) == official
    assert IMG_CONTEXT_TOKEN not in p.tokenizer.get_vocab()  # the family's own vision tokens only


def test_from_pretrained_refuses_an_unknown_family(tmp_path):
    folder = hf_fixture.write_official_folder(tmp_path / "f", "qwen2", seed=1)
    cfg = (folder / "config.json").read_text().replace('"Qwen2ForCausalLM"', '"LlamaForCausalLM"')
    (folder / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match=r"config\.json: llm_config\.architectures"):
        Sa2VAProcessor.from_pretrained(folder)
