"""The Sa2VA-Qwen3-VL shapes in the speed harness (bench/harness/speed.py, bench/gpu/speed_bench.py): the
tiny Qwen3-VL rows run end to end on the CPU with the Qwen-VL samples, the feature-cache rows train exactly
like the reference rows, and the FLOP counts match hand counts from the config numbers and torch's counter."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.harness import speed as hb
from bench.harness.flops import llm_forward_flops, qwen3vl_vision_forward_flops
from projects.sa2va.datasets.qwenvl_processing import QwenVLImageProcessor
from projects.sa2va.models.feature_cache import build_feature_cache
from projects.sa2va.models.qwenvl import Qwen3VLSa2VA
from tests.bench.test_speed_rows import load_tool

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
DATA = ROOT / "data/chase_db1"


@pytest.fixture(scope="module")
def tiny():
    shape = hb.model_shape("tinyqwen3vl")
    torch.manual_seed(0)
    model = hb.build_model(shape, CPU)
    samples = hb.load_samples(shape, model.tokenizer, DATA, 4, 0)
    return shape, model, samples


# --- shapes and samples ----------------------------------------------------------------------------
def test_qwen3vl4b_shape_is_read_from_its_config() -> None:
    shape = hb.model_shape("qwen3vl4b")
    assert shape.mllm_type is Qwen3VLSa2VA and shape.family is hb.Qwen3VLBench
    llm, vision = shape.llm_config, shape.vision_config
    assert (llm["hidden_size"], llm["num_hidden_layers"], llm["head_dim"], llm["vocab_size"]) == (
        2560, 36, 128, 151936,
    )  # fmt: skip
    assert (vision["depth"], vision["hidden_size"], vision["deepstack_visual_indexes"]) == (
        24,
        1024,
        [5, 11, 17],
    )
    assert (shape.sam2_image_size, shape.lora_r, shape.trainable) == (1024, 128, {"mlp1": "frozen"})
    processor = hb.Qwen3VLBench.image_processor(shape)
    assert isinstance(processor, QwenVLImageProcessor) and processor.patch_size == 16
    assert processor.num_tokens(512, 512) == 400  # 512x512 -> 640x640 at Sa2VA's pixel budget


def test_tiny_qwen3vl_samples_are_qwen_vl_samples(tiny) -> None:
    shape, model, samples = tiny
    tok = model.tokenizer
    start, pad, end = (
        tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    )
    processor = QwenVLImageProcessor(**{k: v for k, v in shape.image_processor.items() if k != "type"})
    image = Image.open(DATA / "images" / samples[0]["image_id"]).convert("RGB")
    pixels, grid = processor(image)
    assert torch.equal(samples[0]["image_grid_thw"], grid) and grid.tolist() == [[1, 16, 16]]
    torch.testing.assert_close(samples[0]["pixel_values"], pixels, rtol=0, atol=0)
    for s in samples:
        ids = s["input_ids"].tolist()
        n_slots = int(s["image_grid_thw"].prod()) // 4
        i = ids.index(start)
        assert ids[i + 1 : i + 1 + n_slots] == [pad] * n_slots and ids[i + 1 + n_slots] == end
        assert ids.count(pad) == n_slots == 64
        assert s["pixel_values"].shape == (256, 3 * 2 * 16 * 16)
    assert "<IMG_CONTEXT>" not in tok.get_vocab()  # no InternVL image slots in the Qwen-VL text


# --- the rows --------------------------------------------------------------------------------------
def test_tiny_qwen3vl_rows_run_through_speed_bench(tmp_path, capsys) -> None:
    tool = load_tool()
    groups = tool.parse_rows("tinyqwen3vl:ref,opt2;qwen3vl4b:ref,opt16,opt16-compiled", ref_batch=2)
    assert [g.model for g in groups] == ["tinyqwen3vl", "qwen3vl4b"]
    assert [(c.name, c.batch_size, c.cache, c.compile_llm) for _, c in groups[1].rows] == [
        ("ref", 2, "off", False), ("opt", 16, "memory", False), ("opt", 16, "memory", True),
    ]  # fmt: skip
    out = tmp_path / "rows.jsonl"
    argv = ["--device", "cpu", "--steps", "2", "--warmup", "0", "--profile-steps", "1", "--num-images", "2"]
    argv += ["--workers", "0", "--rows", "tinyqwen3vl:ref,opt2", "--out", str(out)]
    assert tool.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["config"], r["batch"], r["cache"]) for r in rows] == [
        ("tinyqwen3vl", "ref", 2, "off"), ("tinyqwen3vl", "opt", 2, "memory"),
    ]  # fmt: skip
    for r in rows:
        assert r["error"] == ""
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        for key in ("samples_per_s", "step_ms", "llm_ms", "llm_mfu", "llm_mfu_needed", "first_step_s"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["llm_mfu_needed"] < r["llm_mfu"]  # the head at the supervised positions only
        assert r["flops"]["llm"] > 0 and r["flops"]["decoder"] > 0
        assert r["stages_ms"]["llm_fwd"] > 0 and r["stages_ms"]["llm_bwd"] > 0
    ref, opt = rows
    assert ref["flops"]["vit"] > 0 and ref["stages_ms"]["vit"] > 0  # the vision tower ran
    assert opt["flops"]["vit"] == 0 and "vit" not in opt["stages_ms"] and opt["stages_ms"]["cache"] > 0
    assert ref["flops"]["llm"] == opt["flops"]["llm"]
    table = capsys.readouterr().out
    assert (
        "| tinyqwen3vl | - | supervised | ref |" in table
        and "| tinyqwen3vl | - | supervised | opt |" in table
    )


def test_opt_losses_equal_ref_losses(tiny) -> None:
    """The opt path (frozen features from the in-memory cache) trains exactly like the ref path: losses
    equal bit for bit (``torch.equal``, as the model's cached-vs-uncached tests), step after step, on
    cache misses (first pass) and hits (second pass)."""
    _, model, samples = tiny
    batches = hb.make_batches(samples, 2, 2, pin=False)
    order = [0, 1, 0, 1]

    def train(cfg: hb.RunConfig) -> list[torch.Tensor]:
        m = copy.deepcopy(model)
        m.feature_cache = build_feature_cache({"mode": cfg.cache})  # as run_one sets a row up
        m.data_preprocessor.keep_pixels_on_host = m.feature_cache is not None
        m.train()
        trainer = hb.Trainer(m, cfg, CPU)
        losses = []
        for step, i in enumerate(order):
            torch.manual_seed(100 + step)  # LoRA dropout and the mask loss's point sampling
            losses.append(trainer.step(batches[i]))
        if m.feature_cache is not None:
            assert (m.feature_cache.misses, m.feature_cache.hits) == (8, 8)
        return losses

    ref = train(hb.RunConfig("ref", 2))
    opt = train(hb.RunConfig("opt", 2, cache="memory", fused_adamw=True))
    assert all(torch.isfinite(x) for x in ref)
    assert len(set(float(x) for x in ref)) > 1, "the weights change from step to step"
    for step, (a, b) in enumerate(zip(opt, ref, strict=True)):
        assert torch.equal(a, b), (step, float(a), float(b))


# --- FLOPs -----------------------------------------------------------------------------------------
def test_llm_flops_of_the_4b_shape_match_a_hand_count() -> None:
    shape = hb.model_shape("qwen3vl4b")
    n = 481  # tokens of one sample, image tokens included
    # Qwen3-VL-4B text_config: hidden 2560, intermediate 9728, 36 layers, 32 heads x 128, 8 KV heads x 128,
    # vocabulary 151936; LoRA r 128 on q, k, v, o, gate, up, down.
    q, kv = 32 * 128, 8 * 128  # 4096 != hidden 2560: head_dim is the config's
    weights = 2560 * q + q * 2560 + 2 * 2560 * kv + 3 * 2560 * 9728
    lora = 128 * ((2560 + q) + (q + 2560) + 2 * (2560 + kv) + 3 * (2560 + 9728))
    per_layer = 2 * n * (weights + lora) + 2 * 2 * n * n * q
    expected = 36 * per_layer + 2 * n * 2560 * 151936
    assert llm_forward_flops(shape.llm_config, n, lora_r=shape.lora_r) == expected
    # The image path into the LLM: 3 DeepStack levels add [400, 2560] each.
    ids = torch.zeros(2, n, dtype=torch.long)
    ids[:, 10:410] = 7
    batch = SimpleNamespace(input_ids=ids, batch_size=2)
    model = SimpleNamespace(mllm=SimpleNamespace(img_context_token_id=7))
    assert hb.Qwen3VLBench.image_path_forward_flops(shape, model, batch) == 3 * 400 * 2560
    # The vision tower on a 640x640 image: 40x40 patches of 3x2x16x16, 24 blocks of width 1024 (MLP 4096),
    # full attention over the 1600 patches; 4 mergers (1 + 3 DeepStack) of 4096 -> 4096 -> 2560 on 400 tokens.
    patches = 1600
    vision = 2 * patches * 1536 * 1024
    vision += 24 * (2 * patches * (3 * 1024**2 + 1024**2 + 2 * 1024 * 4096) + 2 * 2 * patches**2 * 1024)
    vision += 4 * 2 * 400 * 4096 * (4096 + 2560)
    assert qwen3vl_vision_forward_flops(shape.vision_config, [(1, 40, 40)]) == vision
    grid = SimpleNamespace(image_grid_thw=torch.tensor([[1, 40, 40], [1, 40, 40]]), batch_size=2)
    assert hb.Qwen3VLBench.vision_forward_flops(shape, grid) == vision


def test_qwen3vl_flop_formulas_match_the_flop_counter(tiny) -> None:
    """The analytic counts against torch's counter on the tiny modules (the counter does not count the CPU
    SDPA kernel, so the attention terms are left out; it counts the M-RoPE frequency matmul)."""
    shape, model, _ = tiny
    lm = model.mllm.base_llm()
    n = 40
    cfg = dict(shape.llm_config, vocab_size=lm.get_output_embeddings().weight.shape[0])
    ids = torch.randint(0, 600, (1, n))
    positions = torch.arange(n)[None, None].expand(3, 1, n)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        lm(lm.get_input_embeddings()(ids), torch.ones(1, n, dtype=torch.long), positions)
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    attention = cfg["num_hidden_layers"] * 2 * 2 * n * n * q
    rope = 3 * (cfg["head_dim"] // 2) * n * 2
    # the LoRA-wrapped model counts its adapters too: compare with lora_r of the built model
    assert fc.get_total_flops() == llm_forward_flops(cfg, n, lora_r=shape.lora_r) - attention + rope
    grid = torch.tensor([[1, 8, 12]])
    pixels = torch.randn(96, 3 * 2 * 16 * 16)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.mllm.encode_vit(pixels, grid)
    attention = shape.vision_config["depth"] * 2 * 2 * 96 * 96 * shape.vision_config["hidden_size"]
    assert fc.get_total_flops() == qwen3vl_vision_forward_flops(shape.vision_config, [(1, 8, 12)]) - attention
