"""Model FLOPs per training sample, counted analytically (matmuls and attention; 1 MAC = 2 FLOPs).

Convention (as in the brief): the forward cost of a part is counted once when it runs frozen under
``no_grad`` (InternViT or the Qwen3-VL vision tower with its mergers, the SAM2 image encoder; zero when
their outputs come from the feature cache) and three times (forward + backward) for every part in the
gradient path: InternVL's ``mlp1`` (Qwen3-VL's DeepStack additions), the LLM with its
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
    llm: float  # mlp1 (InternVL) / DeepStack adds (Qwen3-VL) + LLM (base + LoRA + head) + text_hidden_fcs, x3
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
    """Qwen2 / Qwen3 decoder forward on one sequence of ``seq_len`` tokens (dense attention over the full
    length).

    Linear layers: q (H x Q), o (Q x H), k, v (H x kv), gate, up, down (H x I) with ``Q = heads x head_dim``
    and ``kv = kv_heads x head_dim``; ``head_dim`` is the config's (Qwen3: 128 for a 2560-wide model, so
    ``Q != H``) or ``H / heads`` when it has none (Qwen2). LoRA adds ``r (in + out)`` per targeted linear;
    the attention scores and values ``2 x 2 n^2 Q``; the head is ``H x V``. Norms, rotary embeddings and
    activations are not counted.
    """
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    n = seq_len
    linear_params = 2 * h * q + 2 * h * kv + 3 * h * inter
    lora_params = 0
    if lora_r:
        lora_params = lora_r * ((h + q) * 2 + (h + kv) * 2 + (h + inter) * 3)
    attention = 2 * 2 * n * n * q
    per_layer = 2 * n * (linear_params + lora_params) + attention
    head = 2 * n * h * vocab if with_head else 0
    return float(layers * per_layer + head)


def deepstack_flops(hidden: int, image_tokens: int, levels: int) -> float:
    """Qwen3-VL DeepStack: after each of the first ``levels`` decoder layers the level's visual features
    ``[image_tokens, hidden]`` are added to the hidden states at the image positions (1 FLOP an element)."""
    return float(levels * image_tokens * hidden)


def qwen3vl_vision_forward_flops(cfg: dict, grid_thw: list[tuple[int, int, int]]) -> float:
    """Qwen3-VL vision tower forward on images of patch grids ``grid_thw`` (``(t, h, w)`` each).

    Per image ``P = t h w`` patches of ``3 x T x p x p`` values: the patch embedding (a ``Conv3d`` with
    kernel = stride, i.e. a ``3Tp^2 x C`` matmul per patch), ``depth`` blocks of qkv (``C x 3C``),
    attention within each frame (``2 x 2 (hw)^2 C``), proj (``C x C``) and the MLP (``C x I``, ``I x C``),
    then ``1 + len(deepstack_visual_indexes)`` patch mergers on the ``P / m^2`` merged tokens
    (``m^2 C x m^2 C``, ``m^2 C x out_hidden_size``). Norms, position embeddings and activations are not
    counted.
    """
    c, inter, depth = cfg["hidden_size"], cfg["intermediate_size"], cfg["depth"]
    p, tp, m = cfg["patch_size"], cfg["temporal_patch_size"], cfg["spatial_merge_size"]
    out, mergers = cfg["out_hidden_size"], 1 + len(cfg.get("deepstack_visual_indexes") or [])
    total = 0
    for t, h, w in grid_thw:
        n = t * h * w
        patch = 2 * n * (3 * tp * p * p) * c
        attention = t * 2 * 2 * (h * w) ** 2 * c
        per_layer = 2 * n * (3 * c * c + c * c + 2 * c * inter)
        merged = n // (m * m)
        merger = 2 * merged * (m * m * c) * (m * m * c + out)
        total += patch + depth * per_layer + depth * attention + mergers * merger
    return float(total)


def counted_flops(fn, *args, **kwargs) -> float:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter`` (matmul/conv/SDPA ops)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return float(counter.get_total_flops())
