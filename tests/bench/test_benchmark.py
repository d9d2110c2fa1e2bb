"""bench/benchmark.py runs end to end on the CPU with the tiny model; the FLOP formulas and the sampler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.harness.flops import llm_forward_flops, vit_forward_flops
from projects.sa2va.datasets.samplers import LengthGroupedSampler

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_tiny_smoke():
    cmd = [
        sys.executable,
        str(ROOT / "bench/benchmark.py"),
        "--tiny",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--profile-steps",
        "1",
        "--configs",
        "ref,opt",
        "--batch-size",
        "2",
        "--num-images",
        "2",
        "--workers",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "samp/s" in out and "LLM f+b" in out and "peak GiB" in out and "MFU%" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny ")]
    assert [r[1] for r in rows] == ["ref", "opt"]
    assert [r[3] for r in rows] == ["off", "memory"]
    assert all(float(r[4]) > 0 for r in rows)


def test_llm_flops_match_the_flop_counter():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = dict(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**cfg), attn_implementation="sdpa")
    ids = torch.randint(0, 300, (1, 40))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    # torch's counter does not count the CPU SDPA kernel: compare without the attention term
    # (2 layers x QK^T and AV, 2 FLOPs per MAC); it does count the rotary inv_freq matmul (2*8*40).
    attention = 2 * 2 * 2 * 40 * 40 * 64
    assert fc.get_total_flops() == llm_forward_flops(cfg, 40) - attention + 2 * 8 * 40


def test_vit_flops_match_the_flop_counter():
    from projects.sa2va.models.internvit import InternVisionConfig, InternVisionModel

    cfg = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56
    )
    vit = InternVisionModel(InternVisionConfig.from_dict(dict(cfg, patch_size=14)))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        vit(torch.randn(3, 3, 56, 56))
    attention = 3 * 2 * 2 * 2 * 17 * 17 * 32  # not counted on the CPU (see above)
    assert fc.get_total_flops() == vit_forward_flops(dict(cfg, patch_size=14), tiles=3) - attention


class _Lengths:
    def __init__(self, lengths):
        self.lengths = lengths

    def __len__(self):
        return len(self.lengths)


def test_length_grouped_sampler_groups_and_covers():
    lengths = [10, 500, 20, 480, 30, 460, 40, 440] * 4
    ds = _Lengths(lengths)
    s = LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=4, seed=0)
    order = list(s)
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[i : i + 2] for i in range(0, len(order), 2)]
    spread = sum(abs(lengths[a] - lengths[b]) for a, b in batches)
    # 16 batches; random pairs differ by ~230 on average (~3700 in all), grouped ones by ~56.
    assert spread < 1200
    assert lengths[order[0]] == max(lengths)
    s.set_epoch(1)
    assert list(s) != order and sorted(s) == list(range(len(lengths)))
    s2 = LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=4, seed=0)
    assert list(s2) == order  # same seed and epoch: same order on every rank and after resume
    with pytest.raises(TypeError, match="sample_length"):
        LengthGroupedSampler(list(range(4)), batch_size=2, seed=0)


def test_data_pipeline_benchmark_tool(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/benchmark_data.py"),
            "projects/sa2va/configs/sa2va_tiny_demo.py",
            "--samples",
            "4",
            "--batch-size",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert {"float32", "uint8"} <= set(rows)
    mb = {k: float(rows[k].split("|")[6]) for k in ("float32", "uint8")}
    # The tiny config's pixels per sample: one 224-px tile + the 256-px SAM2 input, 4 bytes -> 1 byte each.
    saved = 3 * (224 * 224 + 256 * 256) * 3 / 1e6
    assert abs((mb["float32"] - mb["uint8"]) - saved) < 0.02, mb
