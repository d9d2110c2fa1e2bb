"""Model FLOPs per training sample, counted analytically (matmuls and attention; 1 MAC = 2 FLOPs).

Convention (as in the brief): the forward cost of a part is counted once when it runs frozen under
``no_grad`` (InternViT, the SAM2 image encoder; zero when their outputs come from the feature cache)
and three times (forward + backward) for every part in the gradient path: ``mlp1``, the LLM with its
LoRA adapters and 151k-row head, ``text_hidden_fcs`` and the SAM2 mask decoder. This is the usual
"model FLOPs" of MFU: the backward of a frozen base weight under LoRA costs only the input gradient
(2x, not 3x forward), so the hardware does somewhat less than this count for the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

LORA_TARGETS_PER_LAYER = 7  # q, k, v, o, gate, up, down


@dataclass
class SampleFlops:
    """FLOPs of one training sample, per stage (already multiplied by 1 or 3, see module doc)."""

    vit: float
    sam2_encoder: float
    llm: float  # mlp1 + LLM (base + LoRA + head) + text_hidden_fcs, x3
    decoder: float  # SAM2 prompt encoder + mask decoder incl. conv_s0/s1, x3

    @property
    def total(self) -> float:
        return self.vit + self.sam2_encoder + self.llm + self.decoder


def vit_forward_flops(cfg: dict, tiles: int = 1) -> float:
    """InternViT forward on ``tiles`` tiles: patch embedding + ``layers`` x (qkv, attention, proj, MLP)."""
    c, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    p, s = cfg["patch_size"], cfg["image_size"]
    n_patch = (s // p) ** 2
    n = n_patch + 1  # + CLS
    patch = 2 * n_patch * (3 * p * p) * c
    per_layer = 2 * n * c * 3 * c + 2 * 2 * n * n * c + 2 * n * c * c + 2 * 2 * n * c * inter
    return float(tiles * (patch + layers * per_layer))


def mlp1_forward_flops(vit_dim: int, llm_dim: int, tokens: int) -> float:
    """``mlp1`` (Linear(4C, H) -> Linear(H, H)) on ``tokens`` image tokens."""
    return float(2 * tokens * (4 * vit_dim * llm_dim + llm_dim * llm_dim))


def llm_forward_flops(cfg: dict, seq_len: int, lora_r: int = 0, with_head: bool = True) -> float:
    """Qwen2 forward on one sequence of ``seq_len`` tokens (dense attention over the full length).

    Linear layers: q, o (H x H), k, v (H x kv), gate, up, down (H x I); LoRA adds ``r (in + out)``
    per targeted linear; the head is ``H x V``.
    """
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    kv = h // heads * kv_heads
    n = seq_len
    linear_params = 2 * h * h + 2 * h * kv + 3 * h * inter
    lora_params = 0
    if lora_r:
        lora_params = lora_r * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    attention = 2 * 2 * n * n * h
    per_layer = 2 * n * (linear_params + lora_params) + attention
    head = 2 * n * h * vocab if with_head else 0
    return float(layers * per_layer + head)


def counted_flops(fn, *args, **kwargs) -> float:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter`` (matmul/conv/SDPA ops)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return float(counter.get_total_flops())
