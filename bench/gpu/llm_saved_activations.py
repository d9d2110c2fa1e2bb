"""Bytes the LLM part of a Sa2VA training step keeps for backward, counted on the ``meta`` device (no compute,
no weights), for the reference batch of the 4B shapes: where the reference batch-2 peak goes (issue 19).

    python bench/gpu/llm_saved_activations.py --preset 4b --batch 2 --tokens 382 --supervised 29
    python bench/gpu/llm_saved_activations.py --static --preset 4b

``--static`` counts instead what a training step holds whatever the batch, for each way of training the
embedding and the head (``Sa2VAModel(lora=dict(...))``): the whole benchmark model of the preset (the speed
harness's parts and LoRA settings, bf16 frozen weights as on the GPU) is built on ``meta`` and its tensors
are summed: fp32 trainable weights + gradients + the two AdamW states (16 bytes per trainable parameter),
frozen weights and buffers per part, and the foreach AdamW step's temporary (4 bytes per trainable
parameter; fused AdamW has none). With ``--reference-peak`` (a measured peak of the official recipe) it
predicts each option's peak as that peak minus the official recipe's static bytes plus the option's, taking
the activations and transients of a step as equal in all three. For ``new_tokens`` with PEFT's own
forward (``lora=dict(fast_trainable_tokens=False)``; the default forward, ``trainable_tokens.py``, builds
neither merged weight nor dense weight gradient) that is close but not exact: its head builds a merged
``[V, H]`` bf16 weight in the forward and a dense ``[V, H]`` bf16 gradient in the backward, as autocast's bf16
copy of the official recipe's fp32 head and its bf16 gradient do; its embedding adds a merged ``[V, H]`` bf16
weight at the start of the forward and a dense bf16 gradient at the
end of the backward (0.58 GiB each at 4B shapes), when few activations are held.

Builds the preset's Qwen2 LM (``_base_`` config shapes, 151674-row head as in the benchmark) on ``meta`` with
PEFT LoRA on the 7 linear layers of each decoder layer (``modules_to_save`` embedding / head), all in bf16
(what autocast runs on the GPU), and counts, with ``torch.autograd.graph.saved_tensors_hooks``, the bytes of
every distinct tensor saved for backward during (a) the decoder forward, with and without gradient
checkpointing, and (b) the LM loss with the head at every position vs at ``--supervised`` positions per
sample. Views are counted once, by their base tensor. Not counted: autocast's bf16 copies of the fp32 LoRA
weights (about 2 bytes per LoRA parameter), allocator fragmentation, and the transient tensors of the
backward itself (the printed logits line gives the transient forward tensors of the LM loss).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class FlashLikeAttention(torch.autograd.Function):
    """Stand-in for SDPA that saves what the GPU's flash / memory-efficient kernels save: q, k, v, the output
    and the fp32 log-sum-exp ``[B, heads, L]`` (torch's math kernel, the one ``meta`` runs, would save the
    ``[B, heads, L, L]`` attention matrix instead)."""

    @staticmethod
    def forward(ctx, q, k, v, *args, **kwargs):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("counting only")


def flash_like_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return FlashLikeAttention.apply(q, k, v)


class SavedBytes:
    """Context manager: total bytes of distinct non-parameter tensors saved for backward inside it.

    Parameters saved by their layers (weights for the input gradient) are not counted: they are in memory
    anyway. Views count once, by their base tensor.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = {id(p) for p in module.parameters()}
        self.seen: dict[int, int] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while counting

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in self.seen and id(base) not in self.params:
            self.seen[id(base)] = base.numel() * base.element_size()
            self.keep.append(base)
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedBytes:
        self._sdpa = F.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = flash_like_sdpa
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        torch.nn.functional.scaled_dot_product_attention = self._sdpa

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def build_lm(preset: str, layers: int | None):
    """The preset's Qwen2 causal LM with LoRA, on ``meta``, in bf16."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.harness.presets import BENCH_VOCAB_SIZE, load_preset
    from projects.sa2va.models.internvl import Qwen2InternVL

    p = load_preset(preset)
    cfg = {
        k: v for k, v in p["llm_config"].items() if k not in ("architectures", "auto_map", "_name_or_path")
    }
    if preset != "tiny":
        cfg["vocab_size"] = BENCH_VOCAB_SIZE
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    config = Qwen2Config(**cfg)
    config.tie_word_embeddings = False
    config.use_cache = False
    with torch.device("meta"):
        lm = Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
        fam = Qwen2InternVL.family
        lm = get_peft_model(
            lm,
            LoraConfig(
                r=p["lora_r"],
                lora_alpha=2 * p["lora_r"],
                lora_dropout=0.05,
                target_modules=list(fam.lora_targets),
                modules_to_save=[fam.embed_module, fam.head_module],
            ),
        )
    lm.to(torch.bfloat16)
    lm.train()
    # transformers' rotary module opens torch.autocast(device_type='meta'), which torch rejects: the cos / sin
    # tables (shared by every layer, [B, L, head_dim]) come from this stand-in instead.
    lm.get_base_model().get_decoder().rotary_emb = MetaRotary(
        config.hidden_size // config.num_attention_heads
    )
    return lm, config


class MetaRotary(torch.nn.Module):
    """``(cos, sin)`` ``[B, L, head_dim]`` bf16 meta tensors in place of the rotary embedding's tables."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return torch.empty(shape, device="meta", dtype=x.dtype), torch.empty(
            shape, device="meta", dtype=x.dtype
        )


def decoder_saved(lm, batch: int, tokens: int, checkpointing: bool) -> int:
    base = lm.get_base_model()
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()
    h = base.config.hidden_size
    embeds = torch.empty(batch, tokens, h, device="meta", dtype=torch.bfloat16, requires_grad=True)
    with SavedBytes(lm) as s:
        base.get_decoder()(inputs_embeds=embeds, attention_mask=None, use_cache=False, return_dict=True)
    return s.total


def loss_saved(lm, batch: int, tokens: int, supervised: int | None) -> tuple[int, int]:
    """(saved bytes, bytes of the forward's logits-sized tensors) of the LM loss."""
    base = lm.get_base_model()
    head = base.get_output_embeddings()
    h = base.config.hidden_size
    rows = batch * (tokens - 1) if supervised is None else batch * supervised
    hidden = torch.empty(rows, h, device="meta", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.zeros(rows, dtype=torch.long, device="meta")
    with SavedBytes(lm) as s:
        logits = head(hidden)
        lf = logits.float()
        F.cross_entropy(lf, labels, reduction="sum")
    transient = logits.numel() * logits.element_size() + 2 * lf.numel() * lf.element_size()  # + log_softmax
    return s.total, transient


#: The ways of training the embedding and the head that ``--static`` compares: row name -> the
#: ``Sa2VAModel(lora=dict(...))`` keys on top of the harness's (``bench.harness.speed.bench_lora``).
STATIC_OPTIONS: dict[str, dict] = {
    "official": dict(train_embeddings=True, keep_originals=True),
    "no-originals": dict(train_embeddings=True),
    "new_tokens": dict(train_embeddings="new_tokens"),
}


def build_meta_model(preset: str, lora: dict):
    """The speed harness's model of ``preset`` (``bench.harness.speed.build_model``'s parts and LoRA settings
    with ``lora`` on top) on ``meta``, frozen weights in bf16 as on the GPU."""
    from bench.harness.speed import bench_lora, model_shape
    from projects.sa2va.models.fast_init import no_weight_init
    from projects.sa2va.models.internvl import Qwen2InternVL
    from projects.sa2va.models.losses import MaskLoss
    from projects.sa2va.models.sa2va import Sa2VAModel
    from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
    from projects.sa2va.models.tokenizer import build_tiny_tokenizer

    shape = model_shape(preset)
    # sam2's Hiera reads a tensor value while it is built (`.item()`), which `meta` cannot give: SAM2 is
    # built on the host without initialising its weights (0.45 GiB for Hiera-L, about a second).
    with torch.device("cpu"), no_weight_init(True):
        sam2 = SAM2GroundingEncoder(
            config_name="sam2_hiera_l.yaml", overrides=shape.sam2_overrides, torch_dtype="bfloat16"
        )
    with torch.device("meta"):
        return Sa2VAModel(
            mllm=Qwen2InternVL(
                tokenizer=build_tiny_tokenizer(),
                vision_config=dict(shape.vision_config),
                llm_config=dict(shape.llm_config),
                torch_dtype="bfloat16",
            ),
            grounding_encoder=sam2,
            loss_mask=MaskLoss(bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=True),
            lora=bench_lora(shape, lora),
        )


def static_bytes(model) -> dict[str, int]:
    """What ``model`` holds in every training step, in bytes.

    Keys: ``trainable_params`` (a count), ``trainable_llm_params`` / ``trainable_embed_head_params`` (counts:
    the LLM's, and of those the embedding / head copies or rows), ``trainable_state`` (16 bytes per trainable
    parameter: fp32 weight, gradient, AdamW ``exp_avg`` and ``exp_avg_sq``), ``frozen_<part>`` (frozen
    parameters and buffers of each :data:`~projects.sa2va.models.sa2va.PART_PREFIXES` part, in their dtype),
    ``frozen`` (their sum), ``static`` (``trainable_state + frozen``), ``adamw_foreach_temp`` (4 bytes per
    trainable parameter).
    """
    from projects.sa2va.models.sa2va import PART_PREFIXES, part_of

    out = {f"frozen_{p}": 0 for p in PART_PREFIXES}
    trainable = llm = embed_head = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if p.dtype != torch.float32:
                raise TypeError(f"trainable {name} is {p.dtype}, expected float32 master weights")
            trainable += p.numel()
            if name.startswith(PART_PREFIXES["llm"]):
                llm += p.numel()
                if ".modules_to_save." in name or ".trainable_tokens_delta." in name:
                    embed_head += p.numel()
        else:
            out[f"frozen_{part_of(name)}"] += p.numel() * p.element_size()
    for name, b in model.named_buffers():
        out[f"frozen_{part_of(name)}"] += b.numel() * b.element_size()
    out["frozen"] = sum(v for k, v in out.items() if k.startswith("frozen_"))
    out.update(
        trainable_params=trainable,
        trainable_llm_params=llm,
        trainable_embed_head_params=embed_head,
        trainable_state=16 * trainable,
        adamw_foreach_temp=4 * trainable,
    )
    out["static"] = out["trainable_state"] + out["frozen"]
    return out


def static_report(preset: str, reference_peak_gib: float | None) -> list[str]:
    """One block of lines per :data:`STATIC_OPTIONS` row (see the module docstring)."""
    gib = 2**30
    counts = {name: static_bytes(build_meta_model(preset, lora)) for name, lora in STATIC_OPTIONS.items()}
    lines = [f"{preset} shapes (speed harness model, bf16 frozen weights), static bytes of a training step:"]
    base = counts["official"]
    for name, c in counts.items():
        lora = ", ".join(f"{k}={v!r}" for k, v in STATIC_OPTIONS[name].items())
        sam2 = sum(c[f"frozen_{p}"] for p in ("sam2_image_encoder", "sam2_prompt_encoder", "sam2_other"))
        lines.append(
            f"  {name} (lora {lora}): trainable {c['trainable_params'] / 1e6:.1f} M (LLM "
            f"{c['trainable_llm_params'] / 1e6:.1f} M, of which embedding / head "
            f"{c['trainable_embed_head_params'] / 1e6:.2f} M): fp32 state "
            f"{c['trainable_state'] / gib:.2f} GiB; frozen {c['frozen'] / gib:.2f} GiB (LLM "
            f"{c['frozen_llm'] / gib:.2f}, ViT {c['frozen_vision_model'] / gib:.2f}, SAM2 {sam2 / gib:.2f}"
            f"); static {c['static'] / gib:.2f} GiB ({c['static'] / 1e9:.2f} GB); foreach AdamW temporary "
            f"{c['adamw_foreach_temp'] / gib:.2f} GiB"
        )
        if reference_peak_gib is not None:
            peak = reference_peak_gib - base["static"] / gib + c["static"] / gib
            lines.append(
                f"    predicted peak from the official recipe's measured {reference_peak_gib:.2f} GiB: "
                f"{peak:.2f} GiB = {peak * gib / 1e9:.2f} GB"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="4b", choices=["tiny", "1b", "4b"])
    ap.add_argument(
        "--static",
        action="store_true",
        help="count the static bytes (trainable fp32 state, frozen weights) of each embedding/head option",
    )
    ap.add_argument(
        "--reference-peak",
        type=float,
        default=None,
        metavar="GIB",
        help="with --static: a measured peak (GiB) of the official recipe, to predict the other options'",
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument(
        "--tokens", type=int, default=382, help="tokens per sample (the benchmark's 512-px sample)"
    )
    ap.add_argument(
        "--supervised",
        type=int,
        default=29,
        help="supervised positions per sample (the benchmark's samples: 28.5, printed by speed_bench.py)",
    )
    args = ap.parse_args(argv)
    if args.static:
        print("\n".join(static_report(args.preset, args.reference_peak)))
        return 0
    gib = 2**30
    per_layer = []
    for n in (1, 2):
        lm, config = build_lm(args.preset, n)
        per_layer.append(decoder_saved(lm, args.batch, args.tokens, checkpointing=False))
    layer = per_layer[1] - per_layer[0]
    lm, config = build_lm(args.preset, None)
    full = decoder_saved(lm, args.batch, args.tokens, checkpointing=False)
    ckpt = decoder_saved(lm, args.batch, args.tokens, checkpointing=True)
    all_saved, all_transient = loss_saved(lm, args.batch, args.tokens, None)
    sup_saved, sup_transient = loss_saved(lm, args.batch, args.tokens, args.supervised)
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in lm.parameters() if not p.requires_grad)
    originals = 2 * config.vocab_size * config.hidden_size
    print(
        f"{args.preset} shapes, {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
        f"{config.vocab_size}, batch {args.batch} x {args.tokens} tokens, bf16"
    )
    print(
        f"decoder saved for backward: {full / gib:.2f} GiB ({layer / 2**20:.0f} MiB per layer); "
        f"with gradient checkpointing: {ckpt / gib:.3f} GiB (+ one layer's {layer / 2**20:.0f} MiB while it "
        "is recomputed)"
    )
    print(
        f"LM loss, head at every position: saved {all_saved / gib:.2f} GiB, forward logits tensors "
        f"{all_transient / gib:.2f} GiB; at {args.supervised} supervised positions per sample: saved "
        f"{sup_saved / gib:.3f} GiB, forward logits tensors {sup_transient / gib:.3f} GiB"
    )
    print(
        f"LLM parameters: {frozen / 1e6:.1f} M frozen (bf16 {2 * frozen / gib:.2f} GiB, of which the "
        f"embedding and head originals that modules_to_save keeps but training never reads: "
        f"{2 * originals / gib:.2f} GiB); {trainable / 1e6:.1f} M trainable (fp32 weight + gradient + "
        f"2 AdamW states: {16 * trainable / gib:.2f} GiB; foreach AdamW allocates a "
        f"{4 * trainable / gib:.2f} GiB sqrt temporary during the step)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
