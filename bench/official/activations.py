"""Bytes saved for backward per sample, official Sa2VA training forward vs the toolkit's, grouped by module.

Why does the toolkit's peak GPU memory grow by 2.98 GiB per extra sample at Sa2VA-4B shapes while the
official training code's grows by 1.33 GiB (bench/records/side_by_side_s7)? This script counts, on the host,
every distinct tensor saved for backward (``torch.autograd.graph.saved_tensors_hooks``; views and tensors
sharing a storage count once, parameters not at all) during one training forward of each side, under
``torch.autocast('cpu', dtype=torch.bfloat16)`` as the GPU run autocasts, at batch 1 and batch 2 on the
same CHASE_DB1 samples; the difference is the per-sample cost. Each saved tensor is charged to the
innermost module running when it was saved, grouped (:func:`group_of`) into LLM attention / MLP / LoRA /
norms / embedding / head, vision, SAM2 parts and the top level (losses).

Shapes: the ``4b`` benchmark shapes (Qwen2.5-3B widths, 151674-row head, InternViT-300M widths, SAM2
Hiera-L) with ``--llm-layers`` decoder layers and ``--vit-layers`` InternViT layers (every decoder layer
saves the same, so the per-layer numbers scale to the 36 layers of the 4B LLM). The toolkit side is the
speed harness's model (bench/harness/speed.py: LoRA r=128 dropout 0.05, trained embedding / head copies,
point sampling, ``lm_logits='supervised'``) with frozen weights in bf16 and trainable ones in fp32, as on
the GPU, and once more with its LLM's gradient checkpointing on (``toolkit+ckpt``, non-reentrant as in
``Qwen2InternVL(gradient_checkpointing=True)``); the official side is ``speed_side_by_side.py``'s official
model (weights as its code leaves them), on the same random weights. Writes ``WORK/report.txt``: the table
as measured, and again with the dropout groups at 1 byte per element (what CUDA's dropout saves, see
:func:`per_sample`).

    .venv/bin/python bench/official/activations.py --work /tmp/sa2va_act        # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: Groups of :func:`group_of`, in report order.
GROUPS = (
    "llm.attention",
    "llm.mlp",
    "llm.lora",
    "llm.lora_dropout",
    "llm.norm",
    "llm.layer",
    "llm.checkpoint",
    "llm.embed",
    "llm.head",
    "llm.other",
    "vision",
    "mlp1",
    "text_hidden_fcs",
    "sam2.image_encoder",
    "sam2.prompt_encoder",
    "sam2.mask_decoder",
    "sam2.other",
    "top (losses, glue)",
)


def group_of(name: str) -> str:
    """The report group of a module name of either side (toolkit ``mllm.llm...``, official
    ``mllm.model.language_model...``)."""
    parts = name.split(".")
    if "lora_dropout" in parts:
        return "llm.lora_dropout"
    if "lora_A" in parts or "lora_B" in parts or "lora_dropout" in parts:
        return "llm.lora"
    if "vision_model" in parts:
        return "vision"
    if "mlp1" in parts:
        return "mlp1"
    if "text_hidden_fcs" in parts:
        return "text_hidden_fcs"
    if "grounding_encoder" in parts:
        if "image_encoder" in parts:
            return "sam2.image_encoder"
        if "sam_prompt_encoder" in parts:
            return "sam2.prompt_encoder"
        if "sam_mask_decoder" in parts:
            return "sam2.mask_decoder"
        return "sam2.other"
    if "layers" in parts:
        if "self_attn" in parts:
            return "llm.attention"
        if "mlp" in parts:
            return "llm.mlp"
        if parts[-1].endswith("layernorm"):
            return "llm.norm"
        return "llm.layer"
    if parts[-2:] == ["model", "model"] and ("language_model" in parts or "llm" in parts):
        # the decoder itself (Qwen2Model): checkpointing saves each layer's inputs there, outside its hooks
        return "llm.checkpoint"
    if "embed_tokens" in parts:
        return "llm.embed"
    if "lm_head" in parts:
        return "llm.head"
    if parts[-1] == "norm" or "language_model" in parts or "llm" in parts:
        return "llm.other"
    return "top (losses, glue)"


class SavedByModule:
    """Context manager: bytes of distinct non-parameter storages saved for backward, per module name and
    dtype, charged to the innermost module (of ``model``) running when each was saved."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.stack: list[str] = [""]
        self.seen: set[int] = set()
        self.keep: list[torch.Tensor] = []  # keeps storages alive so their addresses stay unique
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)  # (module, dtype) -> bytes
        self.numel: dict[tuple[str, str], int] = defaultdict(int)  # (module, dtype) -> elements
        self.largest: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        self.handles: list = []

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "meta" or not hasattr(t, "untyped_storage"):
            return t
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.params or ptr in self.seen or st.nbytes() == 0:
            return t
        self.seen.add(ptr)
        self.keep.append(t)
        module = self.stack[-1]
        g = group_of(module)
        key = (module, str(t.dtype).removeprefix("torch."))
        self.bytes[key] += st.nbytes()
        self.numel[key] += st.nbytes() // t.element_size()
        self.largest[g].append((st.nbytes(), module, f"{tuple(t.shape)} {t.dtype}"))
        return t

    def _enter(self, name: str) -> None:
        self.stack.append(name)

    def _leave(self) -> None:
        self.stack.pop()

    def __enter__(self) -> SavedByModule:
        for name, m in self.model.named_modules():
            self.handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: self._enter(n)))
            self.handles.append(m.register_forward_hook(lambda _m, _a, _o: self._leave(), always_call=True))
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        for h in self.handles:
            h.remove()

    def result(self) -> dict:
        top = {
            g: [f"{b / 2**20:.1f} MiB {m} {s}" for b, m, s in sorted(v, reverse=True)[:6]]
            for g, v in self.largest.items()
        }
        return {
            "bytes": [[m, d, b] for (m, d), b in sorted(self.bytes.items())],
            "numel": [[m, d, n] for (m, d), n in sorted(self.numel.items())],
            "largest": top,
        }


def bench_shape(llm_layers: int, vit_layers: int):
    """The ``4b`` benchmark shape with fewer LLM / InternViT layers."""
    from bench.harness import speed as hb

    s = hb.model_shape("4b")
    return dataclasses.replace(
        s,
        name=f"4b-{llm_layers}l",
        llm_config={**s.llm_config, "num_hidden_layers": llm_layers},
        vision_config={**s.vision_config, "num_hidden_layers": vit_layers},
    )


class _Shape:
    """Makes ``bench.harness.speed.model_shape`` return ``shape`` (``speed_side_by_side.prepare`` asks it)."""

    def __init__(self, shape) -> None:
        self.shape = shape

    def __enter__(self):
        from bench.harness import speed as hb

        self.orig = hb.model_shape
        hb.model_shape = lambda _name: self.shape
        return self

    def __exit__(self, *exc) -> None:
        from bench.harness import speed as hb

        hb.model_shape = self.orig


def prepare(args: argparse.Namespace) -> None:
    """Write the official side's inputs (InternVL folder, SAM2 checkpoint, samples) into ``--work``."""
    sys.path.insert(0, str(ROOT))
    import speed_side_by_side as sbs

    ns = argparse.Namespace(device="cpu", src=args.src, data_root=args.data_root, num_images=args.batches[-1])
    with _Shape(bench_shape(args.llm_layers, args.vit_layers)):
        sbs.prepare(ns, "4b", args.work)


def toolkit_side(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.harness import speed as hb
    from projects.sa2va.datasets.collate import sa2va_collate
    from projects.sa2va.models.internvl import Qwen2InternVL
    from projects.sa2va.models.losses import MaskLoss
    from projects.sa2va.models.sa2va import Sa2VAModel
    from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
    from projects.sa2va.models.tokenizer import build_tiny_tokenizer

    shape = bench_shape(args.llm_layers, args.vit_layers)
    torch.manual_seed(0)
    # hb.build_model's parts, with the bf16 frozen weights it gives on CUDA.
    model = Sa2VAModel(
        mllm=Qwen2InternVL(
            tokenizer=build_tiny_tokenizer(),
            vision_config=dict(shape.vision_config),
            llm_config=dict(shape.llm_config),
            torch_dtype="bfloat16",
        ),
        grounding_encoder=SAM2GroundingEncoder(
            config_name="sam2_hiera_l.yaml", overrides=shape.sam2_overrides, torch_dtype="bfloat16"
        ),
        loss_mask=MaskLoss(bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=True),
        lora=hb.bench_lora(shape),
    )
    model.train()
    if args.toolkit_checkpointing:
        # as bench/harness/speed.py's `ckpt` row and Qwen2InternVL(gradient_checkpointing=True) do
        kwargs = {"use_reentrant": False}
        model.mllm.base_llm().gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    samples = hb.load_samples(shape, model.tokenizer, args.data_root, args.batches[-1], workers=0)
    out = {"side": "toolkit", "checkpointing": bool(model.mllm.base_llm().is_gradient_checkpointing)}
    out["dtypes"] = param_dtypes(model)
    for bsz in args.batches:
        data = model.data_preprocessor(sa2va_collate(samples[:bsz], digests=True), True)
        with SavedByModule(model) as s, torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(**data, mode="loss")
            sum(losses.values())
        out[str(bsz)] = s.result()
        out[f"tokens_{bsz}"] = int(data["data"].input_ids.shape[1])
        del losses, s
    return out


def official_side(args: argparse.Namespace) -> dict:
    import speed_side_by_side as sbs
    import torch.distributed as dist

    inp = torch.load(args.work / "official_inputs.pt", weights_only=False)
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{args.work / 'pg'}", rank=0, world_size=1)
    os.chdir(args.work)
    torch.manual_seed(0)
    model, llm_attn = sbs.build_official_model(inp, torch.device("cpu"), "official")
    model.train()
    lm = model.mllm.model.language_model
    out = {"side": "official", "llm_attn": llm_attn, "checkpointing": bool(lm.is_gradient_checkpointing)}
    out["dtypes"] = param_dtypes(model)
    for bsz in args.batches:
        data = sbs.official_batch(inp["samples"], 0, bsz, inp["pad_id"], torch.device("cpu"))
        with SavedByModule(model) as s, torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(data, mode="loss")
            sum(v for k, v in losses.items() if "loss" in k)
        out[str(bsz)] = s.result()
        out[f"tokens_{bsz}"] = int(data["input_ids"].shape[1])
        del losses, s
    dist.destroy_process_group()
    return out


def param_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """``{group/trainable|frozen: 'dtype: count'}`` of the parameters."""
    acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, p in model.named_parameters():
        key = f"{group_of(name.rsplit('.', 1)[0])}/{'trainable' if p.requires_grad else 'frozen'}"
        acc[key][str(p.dtype).removeprefix("torch.")] += p.numel()
    return {k: ", ".join(f"{d} {n / 1e6:.1f}M" for d, n in v.items()) for k, v in sorted(acc.items())}


def per_sample(res: dict, b0: int, b1: int, cuda_dropout: bool = False) -> dict[tuple[str, str], float]:
    """Bytes per extra sample by (:func:`group_of` group, dtype): (batch b1 - batch b0) / (b1 - b0).

    ``cuda_dropout``: charge the dropout groups 1 byte per saved element. On the host ``F.dropout`` saves
    its ``input``-dtype noise tensor for backward (ATen ``dropout`` takes the fused ``native_dropout`` only on
    CUDA / XPU / lazy / privateuse1 tensors); on CUDA ``native_dropout`` saves a bool mask.
    """

    def table(b: int) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = defaultdict(float)
        counts = {(m, d): n for m, d, n in res[str(b)]["numel"]}
        for m, d, v in res[str(b)]["bytes"]:
            g = group_of(m)
            out[(g, d)] += counts[(m, d)] if cuda_dropout and g == "llm.lora_dropout" else v
        return out

    a, b = table(b0), table(b1)
    return {k: (b.get(k, 0) - a.get(k, 0)) / (b1 - b0) for k in sorted(set(a) | set(b))}


#: Groups that repeat once per decoder layer (scaled to the full LLM in :func:`report`).
LAYER_GROUPS = frozenset(
    {"llm.attention", "llm.mlp", "llm.lora", "llm.lora_dropout", "llm.norm", "llm.layer", "llm.checkpoint"}
)


def report(
    sides: dict[str, dict],
    b0: int,
    b1: int,
    llm_layers: int,
    full_layers: int = 36,
    cuda_dropout: bool = False,
) -> list[str]:
    """Per-sample table: MiB by group for each side at the measured shapes, then GiB with the per-layer LLM
    groups scaled by ``full_layers / llm_layers`` (the 4B LLM), dtype split of the measured bytes."""
    mib = 2**20
    per = {name: per_sample(res, b0, b1, cuda_dropout) for name, res in sides.items()}
    names = list(sides)
    tokens = ", ".join(f"{n} {sides[n][f'tokens_{b1}']}" for n in names)
    flags = "; ".join(
        f"{n}: checkpointing={r['checkpointing']}" + (f" attn={r['llm_attn']}" if "llm_attn" in r else "")
        for n, r in sides.items()
    )
    how = "dropout at 1 byte/element (CUDA bool mask)" if cuda_dropout else "as measured on the host"
    lines = [
        f"saved for backward per extra sample, batch {b0} -> {b1} ({how}); padded tokens: {tokens}",
        f"  {flags}",
        f"  MiB at {llm_layers} LLM layers | GiB at 4B (LLM layer groups x{full_layers}/{llm_layers})",
        f"{'group':<20}"
        + "".join(f"{n:>14}" for n in names)
        + " |"
        + "".join(f"{n:>14}" for n in names)
        + "  dtypes (MiB)",
    ]
    tot = dict.fromkeys(names, 0.0)
    for g in GROUPS:
        vals = {n: {d: v for (gg, d), v in per[n].items() if gg == g and v} for n in names}
        sums = {n: sum(v.values()) for n, v in vals.items()}
        if not any(abs(v) >= 0.05 * mib for v in sums.values()):
            continue
        scale = full_layers / llm_layers if g in LAYER_GROUPS else 1.0
        for n in names:
            tot[n] += sums[n] * scale
        dt = " | ".join(" ".join(f"{d}:{v / mib:.1f}" for d, v in vals[n].items()) or "-" for n in names)
        lines.append(
            f"{g:<20}"
            + "".join(f"{sums[n] / mib:>14.1f}" for n in names)
            + " |"
            + "".join(f"{sums[n] * scale / 2**30:>14.3f}" for n in names)
            + f"  {dt}"
        )
    lines.append(
        f"{'total':<20}" + " " * 14 * len(names) + " |" + "".join(f"{tot[n] / 2**30:>14.3f}" for n in names)
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--side", choices=("prepare", "official", "toolkit", "report"), default=None)
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--toolkit-checkpointing", action="store_true", help="toolkit LLM with checkpointing")
    ap.add_argument("--src", type=Path, default=HERE / "src")
    ap.add_argument("--overlay", type=Path, default=Path("/tmp/official_overlay"))
    ap.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.side == "prepare":
        prepare(args)
    elif args.side in ("official", "toolkit"):
        res = official_side(args) if args.side == "official" else toolkit_side(args)
        suffix = "_ckpt" if args.side == "toolkit" and args.toolkit_checkpointing else ""
        (args.work / f"{args.side}{suffix}.json").write_text(json.dumps(res, indent=1))
    else:
        import subprocess

        common = [
            f"--work={args.work}",
            f"--llm-layers={args.llm_layers}",
            f"--vit-layers={args.vit_layers}",
            f"--batches={','.join(map(str, args.batches))}",
            f"--data-root={args.data_root}",
            f"--src={args.src}",
            f"--threads={args.threads}",
        ]
        if args.side is None:
            official_path = ":".join(str(p) for p in (args.overlay, args.src))
            runs = (
                ("prepare", "", []),
                ("official", official_path, []),
                ("toolkit", "", []),
                ("toolkit", "", ["--toolkit-checkpointing"]),
            )
            for side, path, extra in runs:
                env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
                cmd = [sys.executable, __file__, f"--side={side}", *common, *extra]
                subprocess.run(cmd, env=env, check=True)
        sides = {}
        for name, file in (
            ("official", "official"),
            ("toolkit", "toolkit"),
            ("toolkit+ckpt", "toolkit_ckpt"),
        ):
            if (args.work / f"{file}.json").is_file():
                sides[name] = json.loads((args.work / f"{file}.json").read_text())
        b0, b1 = args.batches[0], args.batches[-1]
        host = report(sides, b0, b1, args.llm_layers)
        cuda = report(sides, b0, b1, args.llm_layers, cuda_dropout=True)
        text = "\n".join([*host, "", *cuda])
        (args.work / "report.txt").write_text(text + "\n")
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
