"""Parity with the official Sa2VA training code (bytedance/Sa2VA), see bench/official/.

The key bridge is tested against ``tests/fixtures/official_training_keys_tiny.tsv``: the tensor names and
trainable flags of the official training ``Sa2VAModel`` built at the tiny shapes (written by
``bench/official/parity.py --write-keys`` from a run of the official code). The full parity run needs the
official source in ``bench/official/src`` (``bash bench/official/setup_official.sh``), which CI does not
have (no network to GitHub): that test skips, naming the missing folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.official.bridge import (
    folder_key,
    folder_state,
    hydra_overrides,
    internvl_folder_config,
    official_key,
    official_state,
)
from tests.tiny import ROOT, build_tiny_model

FIXTURE = ROOT / "tests/fixtures/official_training_keys_tiny.tsv"
OFFICIAL_SRC = ROOT / "bench/official/src"
OVERLAY = Path("/tmp/official_overlay")


def official_fixture() -> dict[str, bool]:
    rows = [ln.split("\t") for ln in FIXTURE.read_text().splitlines() if ln and not ln.startswith("#")]
    return {k: flag == "1" for k, flag in rows}


@pytest.fixture(scope="module")
def tiny():
    # The official model keeps PEFT's frozen originals of the embedding / head copies: keep them too.
    return build_tiny_model(0, lora=dict(keep_originals=True))


def test_mapped_keys_are_the_official_model_keys(tiny):
    model, _ = tiny
    mapped = official_state(torch.nn.Module.state_dict(model))
    assert sorted(mapped) == sorted(official_fixture())


def test_trainable_tensors_are_those_of_the_official_recipe(tiny):
    """LoRA + embed/head copies, mlp1, the whole SAM2 mask decoder, text_hidden_fcs: as in sa2va_in30_*.py."""
    model, _ = tiny
    ours = sorted(official_key(n) for n, p in model.named_parameters() if p.requires_grad)
    assert ours == sorted(k for k, t in official_fixture().items() if t)


def test_unknown_key_raises():
    with pytest.raises(KeyError, match="no official name"):
        official_key("mask_head.weight")
    with pytest.raises(KeyError, match="not part of the MLLM"):
        folder_key("text_hidden_fcs.0.weight")


def test_folder_state_holds_the_base_weights_without_adapters(tiny):
    model, _ = tiny
    state = torch.nn.Module.state_dict(model)
    base = folder_state(state)
    assert not any("lora_" in k or "modules_to_save" in k or "base_layer" in k for k in base)
    assert {k.split(".")[0] for k in base} == {"vision_model", "mlp1", "language_model"}
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    src = "mllm.language_model.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(base[q], state[src])
    emb = "language_model.model.embed_tokens.weight"
    assert torch.equal(
        base[emb], state["mllm.language_model.base_model.model.model.embed_tokens.original_module.weight"]
    )
    # Every MLLM tensor is either a folder tensor or an adapter tensor.
    n_adapter = sum(1 for k in state if k.startswith("mllm.") and folder_key(k) is None)
    assert len(base) + n_adapter == sum(1 for k in state if k.startswith("mllm."))


def test_folder_config_keeps_the_tiny_shapes(tiny):
    model, _ = tiny
    cfg = internvl_folder_config(model.mllm, model.mllm.template)
    assert cfg["vision_config"]["architectures"] == ["InternVisionModel"]
    assert cfg["vision_config"]["hidden_size"] == 32 and cfg["vision_config"]["image_size"] == 224
    assert cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["llm_config"]["hidden_size"] == 64 and cfg["llm_config"]["vocab_size"] == len(model.tokenizer)
    assert cfg["force_image_size"] == 224 and cfg["downsample_ratio"] == 0.5


def test_hydra_overrides_of_the_tiny_sam2(tiny):
    _, cfg = tiny
    ov = hydra_overrides(cfg.tiny_sam2_overrides)
    assert "++model.image_size=256" in ov
    assert "++model.image_encoder.trunk.stages=[1,1,1,1]" in ov
    assert "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]" in ov
    assert "++model.memory_attention.layer.cross_attention.kv_in_dim=16" in ov
    assert all(o.startswith("++model.") and "{" not in o for o in ov)
    with pytest.raises(TypeError):
        hydra_overrides({"x": None})


@pytest.mark.skipif(
    not (OFFICIAL_SRC / "projects/sa2va/models/sa2va.py").is_file(),
    reason=f"no official source in {OFFICIAL_SRC}: run bash bench/official/setup_official.sh (needs GitHub)",
)
@pytest.mark.skipif(
    not (OVERLAY / "timm").is_dir(),
    reason=f"no {OVERLAY} (timm for the official InternViT code): run bench/official/setup_official.sh",
)
def test_training_forward_matches_the_official_code(tmp_path):
    out = tmp_path / "table.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/official/parity.py"),
            "--work",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["name"]: r["max_abs_diff"] for r in json.loads(out.read_text())}
    for name in (
        "all_pixels/lm_loss",
        "all_pixels/seg_embeds",
        "all_pixels/mask_logits",
        "all_pixels/loss_mask",
        "all_pixels/loss_dice",
        "points/loss_mask",
        "points/loss_dice",
        "points/point_coords random part",
        "points@official_coords/loss_mask",
        "points@official_coords/loss_dice",
    ):
        assert rows[name] <= 1e-5, (name, rows[name])
    for mode in ("all_pixels", "points"):
        grads = [n for n in rows if n.startswith(f"{mode}/grad/")]
        assert len(grads) == 5 and all(rows[n] <= 1e-5 for n in grads), mode
