"""bench/harness/op_profile.py on the CPU: one profiled reference step of the harness model.

Releasing PEFT's frozen embedding / head originals (the default since 489a039) must leave the step's work
unchanged: the same ATen ops the same number of times and the same losses as keeping them. Training only
the added tokens' rows (``train_embeddings='new_tokens'``, PEFT ``trainable_token_indices``) with PEFT's
own forward (``fast_trainable_tokens=False``) adds, per forward of the embedding and of the head, a host
tensor of the token ids (on CUDA a blocking copy) and an out-of-place ``index_copy`` of the whole weight
(peft 0.21.2 ``TrainableTokensLayer.get_merged_weights``); the default fast forward
(:mod:`projects.sa2va.models.trainable_tokens`) adds neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import op_profile

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--hidden", "64", "--layers", "2", "--vocab", "703", "--lora-r", "8", "--warmup", "1"]


def run(*lora: str) -> dict:
    args = op_profile.build_parser().parse_args([*TINY, *(x for kv in lora for x in ("--lora", kv))])
    return op_profile.profile(args)


@pytest.fixture(scope="module")
def profiles() -> dict[str, dict]:
    return {
        "default": run(),
        "keep": run("keep_originals=True"),
        "new_tokens": run("train_embeddings=new_tokens"),
        "new_tokens_peft": run("train_embeddings=new_tokens", "fast_trainable_tokens=False"),
    }


def counts(record: dict) -> dict[str, int]:
    return {k: v["count"] for k, v in record["ops"].items()}


def test_released_originals_change_no_step_work(profiles):
    default, keep = profiles["default"], profiles["keep"]
    assert default["losses"] == keep["losses"]  # bitwise: same draws, same arithmetic
    assert counts(default) == counts(keep)
    assert (
        default["trainable"] == keep["trainable"]
        and default["trainable_tensors"] == keep["trainable_tensors"]
    )
    rows, hidden = 703, 64  # tiny tokenizer rows; the two released originals are rows x hidden each
    assert keep["parameters"] - default["parameters"] == 2 * rows * hidden
    assert default["host_tensors"] == 0 and "aten::index_copy" not in default["ops"]


def test_new_tokens_with_peft_forward_copies_both_weights_every_forward(profiles):
    new, default = profiles["new_tokens_peft"], profiles["default"]
    assert new["ops"]["aten::index_copy"]["count"] == 2  # embedding and head, one full copy each
    assert new["ops"]["autograd::engine::evaluate_function: IndexCopyBackward0"]["count"] == 2
    assert new["host_tensors"] == 2  # torch.tensor(token_indices) per forward: a blocking copy on CUDA
    assert new["losses"][0] == default["losses"][0]  # same model before the first update
    assert new["trainable"] < default["trainable"]


def test_new_tokens_fast_forward_copies_no_weight_and_no_ids(profiles):
    fast, peft, default = profiles["new_tokens"], profiles["new_tokens_peft"], profiles["default"]
    assert "aten::index_copy" not in fast["ops"]  # no out-of-place copy of a weight
    # one in-place write of the trained columns into the head's fresh [N, V] logits, and its backward
    assert fast["ops"]["aten::index_copy_"]["count"] == 1
    assert fast["ops"]["autograd::engine::evaluate_function: IndexCopyBackward0"]["count"] == 1
    assert fast["host_tensors"] == 0
    assert fast["trainable"] == peft["trainable"]
    # same model before the first update; the head's trained columns come from their own matmul (rounding)
    assert fast["losses"][0] == pytest.approx(default["losses"][0], rel=1e-6)


def test_compare_lists_the_differing_ops(profiles, tmp_path):
    paths = []
    for name in ("default", "new_tokens_peft"):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(profiles[name]))
    text = op_profile.compare(*paths, top=5)
    assert "  aten::index_copy: 0 -> 2" in text and "  aten::lift_fresh: 0 -> 2" in text
    same = op_profile.compare(paths[0], paths[0], top=5)
    assert same.rstrip().endswith("ops whose call count differs (0):")


def test_lora_values_and_refusals():
    assert op_profile.parse_value_pair("keep_originals=True") == ("keep_originals", True)
    assert op_profile.parse_value_pair("r=16") == ("r", 16)
    assert op_profile.parse_value_pair("train_embeddings=new_tokens") == ("train_embeddings", "new_tokens")
    with pytest.raises(SystemExit, match="expected key=value"):
        op_profile.parse_value_pair("keep_originals")
