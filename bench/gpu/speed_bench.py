"""Issue 19 speed/memory rows for Sa2VA-1B / -4B shapes: the LM head at every position vs only at the
supervised positions, the reference batch 2 with and without gradient checkpointing (foreach and fused
AdamW), and the largest optimised batch that fits the card. Run by ``bench/gpu/speed_run.sh`` (see there
for the GPU box set-up).

    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu/speed_bench.py --models 4b,1b            # one GPU
    python bench/gpu/speed_bench.py --tiny --steps 2 --warmup 1 --profile-steps 1          # CPU smoke run

Every row goes through :func:`bench.harness.speed.run_one` (the throughput pass times
``Sa2VAModel(mode='loss')``, so ``lm_logits`` decides the LM head there). Its profiling pass (the ``LLM f+b``
column and the harness's LLM MFU) runs a staged copy of the step that takes the row's ``lm_logits`` path too,
so the LLM time is that of the step that was timed. ``LLM MFU`` counts the LLM
FLOPs as the harness does (the head at every position); ``LLM MFU*`` counts the head only at the supervised
positions, the FLOPs the supervised path needs (the honest figure for its rows).

An optimised batch that runs out of memory ends the search upwards for that model (the row stays in the
table, as the harness writes it). Rows are also written as JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="4b,1b", help="comma list of 1b, 4b (ignored with --tiny)")
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (smoke run)")
    p.add_argument("--ref-batch", type=int, default=2)
    p.add_argument(
        "--opt-batches",
        default="4b:16,24,32,48;1b:16,32,64,96",
        help="per model the optimised batches, ascending ('tiny:2,4' for --tiny); the search stops at the "
        "first that runs out of memory",
    )
    p.add_argument("--baseline", default="ref,opt16", help="rows also run with lm_logits='all' (ref, opt16)")
    p.add_argument(
        "--no-ckpt",
        action="store_true",
        help="skip the batch-2 gradient-checkpointing rows (foreach / fused AdamW)",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--num-images", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    p.add_argument("--out", default=None, help="JSON-lines file of the rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def supervised_fraction(samples: list[dict]) -> tuple[float, float]:
    """(mean tokens per sample, mean supervised positions per sample) of the preprocessed samples."""
    from projects.sa2va.datasets.collate import sa2va_collate

    b = sa2va_collate(samples)["data"]
    tokens = float(b.attention_mask.sum()) / b.batch_size
    sup = float((b.labels[:, 1:] != -100).sum()) / b.batch_size
    return tokens, sup


def llm_mfu(
    r, peak: float, *, head_rows_per_sample: float | None, tokens: float, hidden: int, vocab: int
) -> float:
    """LLM-part MFU of a row from its profiling pass; ``head_rows_per_sample`` replaces the head's
    rows-per-sample count (every token) in the harness's FLOPs when given."""
    llm_t = sum(r.stages.get(k, 0.0) for k in ("llm_fwd", "llm_bwd"))
    if r.error or not r.flops or not llm_t:
        return 0.0
    flops = r.flops.llm
    if head_rows_per_sample is not None:
        flops -= 3 * 2 * hidden * vocab * (tokens - head_rows_per_sample)
    return flops * r.config.batch_size / llm_t / peak * 100


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mmengine.logging import MMLogger

    from bench.harness import speed as hb

    MMLogger.get_instance("sa2va_speed", log_level="WARNING")
    device = hb.benchmark_device(args.device)
    names = ["tiny"] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    opt_batches = {}
    for part in args.opt_batches.split(";"):
        name, _, sizes = part.partition(":")
        opt_batches[name.strip()] = [int(s) for s in sizes.split(",") if s.strip()]
    baseline = {b.strip() for b in args.baseline.split(",") if b.strip()}
    t0 = time.time()
    peak = hb.matmul_rate(device)
    card = hb.device_name(device)
    print(f"[speed] {card}: matmul {peak / 1e12:.3g} TFLOP/s", flush=True)
    rows = []
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (kept open over the run)
    for name in names:
        shape = hb.model_shape(name)
        torch.manual_seed(0)
        model = hb.build_model(shape, device)
        samples = hb.load_samples(shape, model.tokenizer, args.data_root, args.num_images, args.workers)
        tokens, sup = supervised_fraction(samples)
        vocab = model.mllm.base_llm().get_output_embeddings().weight.shape[0]
        hidden = model.mllm.hidden_size
        print(
            f"[speed] built {name}: {tokens:.0f} tokens and {sup:.1f} supervised positions per sample",
            flush=True,
        )
        ref, opt = hb.run_configs(["ref", "opt"], ref_batch=args.ref_batch, opt_batch=1, compile_llm=False)
        plan = []
        if "ref" in baseline:
            plan.append(("all", ref))
        plan.append(("supervised", ref))
        if not args.no_ckpt:
            plan.append(("supervised", replace(ref, name="ckpt", gradient_checkpointing=True)))
            # The same with fused AdamW: foreach AdamW's step allocates a sqrt copy of every state tensor
            # (3.2 GiB at 4B), which can set the batch-2 peak once checkpointing has removed the activations.
            ckpt_fused = replace(ref, name="ckpt-fused", gradient_checkpointing=True, fused_adamw=True)
            plan.append(("supervised", ckpt_fused))
        sizes = opt_batches.get(name, [])
        if "opt16" in baseline and sizes:
            plan.append(("all", replace(opt, batch_size=sizes[0])))
        plan += [("supervised", replace(opt, batch_size=b)) for b in sizes]
        for lm_logits, cfg in plan:
            model.lm_logits = lm_logits
            t = time.time()
            r = hb.run_one(
                model,
                shape,
                cfg,
                samples,
                device=device,
                steps=args.steps,
                warmup=args.warmup,
                profile_steps=args.profile_steps,
                cache_dir=None,
            )
            harness_mfu = llm_mfu(
                r, peak, head_rows_per_sample=None, tokens=tokens, hidden=hidden, vocab=vocab
            )
            needed = sup if lm_logits == "supervised" else None
            mfu_needed = llm_mfu(
                r, peak, head_rows_per_sample=needed, tokens=tokens, hidden=hidden, vocab=vocab
            )
            row = dict(
                card=card,
                model=name,
                lm_logits=lm_logits,
                config=cfg.name,
                batch=cfg.batch_size,
                cache=cfg.cache,
                gradient_checkpointing=cfg.gradient_checkpointing,
                samples_per_s=r.samples_per_s,
                step_ms=r.step_s * 1e3,
                peak_gib=r.peak_gib,
                peak_gb=r.peak_gib * 2**30 / 1e9,
                llm_ms=sum(r.stages.get(k, 0.0) for k in ("llm_fwd", "llm_bwd")) * 1e3,
                llm_mfu=harness_mfu,
                llm_mfu_needed=mfu_needed,
                loss=r.loss,
                error=r.error,
                stages_ms={k: v * 1e3 for k, v in r.stages.items()},
                flops=asdict(r.flops) if r.flops else None,
            )
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            figures = r.error or f"{r.samples_per_s:.2f} samples/s, peak {r.peak_gib:.2f} GiB"
            tag = f"{name}/{cfg.name}/b{cfg.batch_size}/{lm_logits}"
            print(f"[speed] {tag}: {figures} ({time.time() - t:.0f} s)", flush=True)
            if r.error and cfg.name == "opt" and lm_logits == "supervised":
                break  # larger batches would run out of memory too
        model = samples = None
        hb.free_memory(device)
    print()
    print(format_rows(rows, card, peak))
    print(f"[speed] total {time.time() - t0:.0f} s")
    if out:
        out.close()
    return 0 if any(not r["error"] for r in rows) else 1


def format_rows(rows: list[dict], card: str, peak: float) -> str:
    lines = [
        f"Issue 19 rows on {card} (bf16 matmul peak measured {peak / 1e12:.3g} TFLOP/s); samples/s and peak "
        "from the throughput pass, LLM ms (forward+backward) from the profiling pass",
        "| card | model | LM head | config | batch | cache | samples/s | step ms | peak GiB | peak GB "
        "| LLM ms | LLM MFU % | LLM MFU* % | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['card']} | {r['model']} | {r['lm_logits']} | {r['config']} | {r['batch']} "
        head += f"| {r['cache']} "
        if r["error"]:
            lines.append(f"{head}| {r['error']} | | | | | | | |")
            continue
        lines.append(
            head
            + f"| {r['samples_per_s']:.2f} | {r['step_ms']:.1f} | {r['peak_gib']:.2f} | {r['peak_gb']:.2f} "
            f"| {r['llm_ms']:.1f} | {r['llm_mfu']:.1f} | {r['llm_mfu_needed']:.1f} | {r['loss']:.3f} |"
        )
    lines.append(
        "LLM MFU: the harness's LLM FLOPs (head at every position); LLM MFU*: the head counted only at the "
        "supervised positions for the 'supervised' rows (the FLOPs that path needs)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
