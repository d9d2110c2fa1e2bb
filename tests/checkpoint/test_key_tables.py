"""The HF key table against the official key/shape lists (tests/fixtures/sa2va_hf_keys_*.tsv)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from projects.sa2va.checkpoint.hf_sa2va import merged_model_tensors
from projects.sa2va.checkpoint.key_tables import (
    HF_KEY_TABLE,
    REFERENCE_PTH_TABLE,
    UnknownKeyError,
    plain_name,
)
from projects.sa2va.models.internvl import InternLM2InternVL, Qwen2InternVL
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from projects.sa2va.models.tokenizer import build_tiny_tokenizer
from tests.checkpoint.hf_fixture import tiny_llm_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VISION = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=448
)


def tsv(family: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in (FIXTURES / f"sa2va_hf_keys_{family}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            k, shape = line.split("\t")
            rows[k] = tuple(ast.literal_eval(shape))
    return rows


class Holder(nn.Module):
    """Sa2VAModel's module layout (mllm, grounding_encoder, text_hidden_fcs) without its build steps."""

    def __init__(self, mllm: nn.Module, sam2: nn.Module) -> None:
        super().__init__()
        self.mllm = mllm
        self.grounding_encoder = sam2
        h = mllm.hidden_size
        self.text_hidden_fcs = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 256), nn.Dropout(0.0))


@pytest.fixture(scope="module")
def sam2_hiera_l() -> SAM2GroundingEncoder:
    torch.manual_seed(0)
    return SAM2GroundingEncoder()  # the full Hiera-L of the official folders


@pytest.mark.parametrize(("family", "cls"), [("qwen2", Qwen2InternVL), ("internlm2", InternLM2InternVL)])
def test_export_names_and_shapes_equal_the_official_list(family, cls, sam2_hiera_l):
    ref = tsv(family)
    vocab = ref[
        "language_model.model.embed_tokens.weight" if family == "qwen2" else "language_model.output.weight"
    ][0]
    mllm = cls(
        tokenizer=build_tiny_tokenizer(), vision_config=VISION, llm_config=tiny_llm_config(family, vocab)
    )
    mllm.apply_lora(r=4, alpha=8, dropout=0.0)  # export names must not depend on LoRA wrapping
    model = Holder(mllm, sam2_hiera_l)
    got = {HF_KEY_TABLE.to_format(e.model_key): e.shape for e in merged_model_tensors(model)}
    assert sorted(set(got) - set(ref)) == [] and sorted(set(ref) - set(got)) == []
    assert {k: v for k, v in got.items() if v != ref[k]} == {}


def test_key_tables_map_both_ways_and_reject_unknown_names():
    k = "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight"
    assert HF_KEY_TABLE.to_model(k).endswith(".gamma")
    assert HF_KEY_TABLE.to_format(HF_KEY_TABLE.to_model(k)) == k
    assert HF_KEY_TABLE.to_model("language_model.output.weight") == "mllm.language_model.output.weight"
    assert REFERENCE_PTH_TABLE.to_format("mllm.mlp1.0.weight") == "mllm.model.mlp1.0.weight"
    with pytest.raises(UnknownKeyError, match=r"'model\.vision_tower\.x'"):
        HF_KEY_TABLE.to_model("model.vision_tower.x")
    lm = "mllm.language_model.base_model.model."
    assert plain_name(lm + "model.layers.0.attention.wqkv.base_layer.weight") == (
        "mllm.language_model.model.layers.0.attention.wqkv.weight"
    )
    assert plain_name(lm + "output.modules_to_save.default.weight") == "mllm.language_model.output.weight"
    assert plain_name(lm + "model.tok_embeddings.original_module.weight") == (
        "mllm.language_model.model.tok_embeddings.weight"
    )
