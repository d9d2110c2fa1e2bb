"""``bench/gpu/llm_saved_activations.py --static``: the static bytes of a training step per way of training
the embedding and the head, counted from the model the speed harness builds (tiny preset here, the 4B preset
on the GPU box): each difference is the bytes the option removes, derived here from the shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench/gpu"))

import llm_saved_activations as account  # noqa: E402

from projects.sa2va.models.tokenizer import SPECIAL_TOKENS  # noqa: E402


@pytest.fixture(scope="module")
def counts():
    models = {name: account.build_meta_model("tiny", lora) for name, lora in account.STATIC_OPTIONS.items()}
    return models, {name: account.static_bytes(m) for name, m in models.items()}


def test_released_originals_remove_two_bf16_vocab_matrices(counts):
    models, c = counts
    lm = models["official"].mllm.base_llm()
    v, h = lm.get_input_embeddings().weight.shape
    assert lm.get_input_embeddings().original_module.weight.dtype.itemsize == 2  # bf16 frozen weights
    assert c["official"]["frozen_llm"] - c["no-originals"]["frozen_llm"] == 2 * v * h * 2
    assert c["official"]["frozen"] - c["no-originals"]["frozen"] == 2 * v * h * 2
    for key in ("trainable_params", "trainable_state", "adamw_foreach_temp"):
        assert c["official"][key] == c["no-originals"][key]
    assert c["official"]["trainable_embed_head_params"] == 2 * v * h


def test_new_tokens_trains_two_rows_per_added_token_instead_of_two_copies(counts):
    models, c = counts
    v, h = models["official"].mllm.base_llm().get_input_embeddings().weight.shape
    rows = 2 * len(SPECIAL_TOKENS) * h
    assert c["new_tokens"]["trainable_embed_head_params"] == rows
    assert c["official"]["trainable_params"] - c["new_tokens"]["trainable_params"] == 2 * v * h - rows
    assert c["official"]["trainable_state"] - c["new_tokens"]["trainable_state"] == 16 * (2 * v * h - rows)
    # The frozen base embedding / head stay (as the official recipe's originals), plus the rows' start values.
    assert c["new_tokens"]["frozen_llm"] - c["official"]["frozen_llm"] == rows * 4
    for name in c:
        assert c[name]["static"] == c[name]["trainable_state"] + c[name]["frozen"]
        assert c[name]["trainable_state"] == 16 * c[name]["trainable_params"]


def test_report_predicts_each_option_from_a_reference_peak():
    lines = account.static_report("tiny", reference_peak_gib=10.0)
    assert lines[0].startswith("tiny shapes")
    rows = [ln for ln in lines if ln.startswith("  ") and not ln.startswith("    ")]
    assert [r.split(" ")[2] for r in rows] == list(account.STATIC_OPTIONS)
    predicted = [ln for ln in lines if "predicted peak" in ln]
    assert len(predicted) == 3 and "10.00 GiB" in predicted[0].split(":")[-1]
