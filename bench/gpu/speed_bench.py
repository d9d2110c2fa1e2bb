"""Issue 19 speed/memory rows for Sa2VA-1B / -4B and Sa2VA-Qwen3-VL-4B shapes: the LM head at every
position vs only at the supervised positions, the reference batch 2 with and without gradient
checkpointing (foreach and fused AdamW), the optimised (feature-cache) batches, eager or with the decoder
layers compiled, under LoRA settings other than the reference's. Run by ``bench/gpu/speed_run.sh`` (see
there for the GPU box set-up).

    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu/speed_bench.py --models 4b,1b            # one GPU
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu/speed_bench.py \
        --rows "1b:opt32,opt32-compiled;4b[train_embeddings=new_tokens]:ref,ckpt-fused,opt24"
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu/speed_bench.py --rows "qwen3vl4b:ref,opt16,opt16-compiled"
    python bench/gpu/speed_bench.py --tiny --steps 2 --warmup 1 --profile-steps 1          # CPU smoke run
    python bench/gpu/speed_bench.py --device cpu --steps 2 --warmup 1 --profile-steps 1 --workers 0 \
        --num-images 4 --rows "tinyqwen3vl:ref,opt2"                                     # Qwen3-VL on the CPU

``--rows``: groups ``MODEL[KEY=VALUE,...]:ROW,ROW,...`` separated by ``;``. ``MODEL`` is ``1b``, ``4b``,
``tiny`` (InternVL shapes), ``qwen3vl4b`` (Sa2VA-Qwen3-VL-4B: Qwen3-VL-4B vision tower and text decoder, SAM2
Hiera-L; ``_base_/model_sa2va_qwen3vl_4b_random.py``) or ``tinyqwen3vl`` (``_base_/model_tiny_qwen3vl.py``);
the Qwen3-VL samples are built with the config's Qwen-VL image processor (patches + ``image_grid_thw``, 400
image tokens for a 512x512 image at the 4B's pixel budget) and its LLM FLOPs count the Qwen3 decoder from
``text_config`` (``head_dim`` included), every token (image tokens too) and the DeepStack additions. The
optional ``[...]`` are LoRA overrides (``RunConfig.lora``, e.g. ``train_embeddings=new_tokens``,
``keep_originals=True``; values ``True`` / ``False`` / numbers / text) with which the group's model is built
(one build per group, freed before the next). ``ROW`` is ``ref`` (batch ``--ref-batch``, no cache), ``ckpt``
(ref + gradient checkpointing), ``ckpt-fused`` (the same with fused AdamW), ``optN`` (feature cache in
memory, fused AdamW, batch ``N``) or ``optN-ckptK`` (``optN`` with the first ``K`` LLM decoder layers
recomputed in backward: ``RunConfig.gradient_checkpointing=K``, the adapters' per-layer policy of
:mod:`projects.sa2va.models.checkpointing`; e.g. ``4b:opt24-ckpt12``), each optionally followed by
``-all`` (the LM head at every position, ``lm_logits='all'``; default: only at the supervised positions),
``-compiled`` (the decoder layers compiled, ``RunConfig.compile_llm``) and ``-cdec`` (the SAM2 mask decoder
compiled, ``RunConfig.compile_decoder``; e.g. ``4b:opt16-compiled-cdec``).
Without ``--rows`` the plan is the one of ``--models``, ``--opt-batches``, ``--baseline`` and ``--no-ckpt``.

Every row goes through :func:`bench.harness.speed.run_one` (the throughput pass times
``Sa2VAModel(mode='loss')``, so ``lm_logits`` decides the LM head there). Its profiling pass (the ``LLM f+b``
column and the harness's LLM MFU) runs a staged copy of the step that takes the row's ``lm_logits`` path too,
so the LLM time is that of the step that was timed. ``LLM MFU`` counts the LLM
FLOPs as the harness does (the head at every position); ``LLM MFU*`` counts the head only at the supervised
positions, the FLOPs the supervised path needs (the honest figure for its rows).

An optimised batch that runs out of memory ends the search upwards in its group: the group's later ``opt``
rows of the same LM head, compilation and checkpointed layers at that batch or larger are listed as not
run. With ``--budget-s``, a row (or a model build) that would start later than that many seconds after the
start is listed as not run. Every row is also written as a JSON line to ``--out``.

A group whose model cannot be built with its LoRA overrides (a ``TypeError`` / ``ValueError`` of the model
code) lists its rows as "build failed: <error>", and a ``-compiled`` row whose compilation raises lists
"compile failed: <error>" (traceback in the log); the other rows run, and the exit status is 1.

Per row the table also gives the padding fraction of the batch (padded positions / all positions: the
share of the LLM's token positions that padding-free packing would remove) and the size of one fp32 copy of
the step's LM logits at the supervised positions (what a fused linear cross-entropy would never
materialise) and at every position (what ``lm_logits='all'`` materialises).

``--kernel-profile`` (CUDA) runs one more step of each row under ``torch.profiler`` and adds a second table:
the step's device span, the share of it in which a kernel ran (the rest is the device waiting for the
host), and the kernel time by kind (GEMM, attention, compiled, element-wise, ...;
:mod:`bench.harness.kernel_profile`); the row's JSON line holds the same with its top kernels.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", default="4b,1b", help="comma list of 1b, 4b, qwen3vl4b (ignored with --tiny or --rows)"
    )
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (smoke run)")
    p.add_argument("--rows", default=None, help="the row plan (see above); replaces the four options below")
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
    p.add_argument("--budget-s", type=float, default=None, help="rows starting later than this are not run")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument(
        "--kernel-profile", action="store_true", help="device kernels of one more step by kind (CUDA rows)"
    )
    p.add_argument("--num-images", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    p.add_argument("--out", default=None, help="JSON-lines file of the rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


# --- the row plan ----------------------------------------------------------------------------------
MODELS = ("1b", "4b", "tiny", "qwen3vl4b", "tinyqwen3vl")
_GROUP = re.compile(r"^(?P<model>[a-z0-9]+)(?:\[(?P<lora>[^\]]*)\])?:(?P<rows>.+)$")
_ROW = re.compile(
    r"^(?P<kind>ref|ckpt-fused|ckpt|opt(?P<batch>\d+)(?:-ckpt(?P<ckpt>\d+))?)"
    r"(?P<all>-all)?(?P<compiled>-compiled)?(?P<cdec>-cdec)?$"
)


@dataclass
class Group:
    """One model build and the rows run on it: ``rows`` are ``(lm_logits, RunConfig)``."""

    model: str
    lora: dict
    rows: list = field(default_factory=list)


def parse_value(text: str) -> object:
    """A LoRA override's value: ``True`` / ``False`` / a number, else the text itself."""
    if text in ("true", "false"):
        return text == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (bool, int, float)) else text


def parse_rows(spec: str, ref_batch: int) -> list[Group]:
    """The groups of a ``--rows`` spec (module docstring); ``ValueError`` naming the part at fault."""
    from bench.harness import speed as hb

    groups = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        m = _GROUP.match(part)
        if not m or m["model"] not in MODELS:
            raise ValueError(
                f"--rows: {part!r} is not MODEL[KEY=VALUE,...]:ROW,... with MODEL one of {MODELS}"
            )
        lora = {}
        for item in (i.strip() for i in (m["lora"] or "").split(",")):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"--rows: LoRA override {item!r} in {part!r} is not KEY=VALUE")
            lora[key.strip()] = parse_value(value.strip())
        group = Group(m["model"], lora)
        for token in (t.strip() for t in m["rows"].split(",")):
            r = _ROW.match(token)
            if not r:
                raise ValueError(
                    f"--rows: row {token!r} in {part!r} is not ref, ckpt, ckpt-fused, optN or optN-ckptK, "
                    "with optional -all, -compiled and -cdec"
                )
            kind = r["kind"]
            if kind == "ref":
                cfg = hb.RunConfig("ref", ref_batch)
            elif kind == "ckpt":
                cfg = hb.RunConfig("ckpt", ref_batch, gradient_checkpointing=True)
            elif kind == "ckpt-fused":
                cfg = hb.RunConfig("ckpt-fused", ref_batch, gradient_checkpointing=True, fused_adamw=True)
            elif r["ckpt"] is None:
                cfg = hb.RunConfig("opt", int(r["batch"]), cache="memory", fused_adamw=True)
            else:  # optN-ckptK: the first K decoder layers checkpointed
                layers, n = int(r["ckpt"]), hb.model_shape(m["model"]).llm_config["num_hidden_layers"]
                if layers > n:
                    raise ValueError(
                        f"--rows: row {token!r} in {part!r} checkpoints {layers} of {n} decoder layers"
                    )
                name, batch = f"opt-ckpt{layers}", int(r["batch"])
                cfg = hb.RunConfig(
                    name, batch, cache="memory", fused_adamw=True, gradient_checkpointing=layers
                )
            cfg = replace(
                cfg, compile_llm=bool(r["compiled"]), compile_decoder=bool(r["cdec"]), lora=dict(lora)
            )
            group.rows.append(("all" if r["all"] else "supervised", cfg))
        groups.append(group)
    if not groups:
        raise ValueError(f"--rows: no groups in {spec!r}")
    return groups


def legacy_rows(args: argparse.Namespace) -> str:
    """The ``--rows`` spec of ``--models`` / ``--tiny``, ``--opt-batches``, ``--baseline``, ``--no-ckpt``:
    per model ref (+ ref-all), ckpt and ckpt-fused, the first opt batch with the head everywhere, then every
    opt batch."""
    names = ["tiny"] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    opt_batches = {}
    for part in args.opt_batches.split(";"):
        name, _, sizes = part.partition(":")
        opt_batches[name.strip()] = [int(s) for s in sizes.split(",") if s.strip()]
    baseline = {b.strip() for b in args.baseline.split(",") if b.strip()}
    groups = []
    for name in names:
        rows = (["ref-all"] if "ref" in baseline else []) + ["ref"]
        if not args.no_ckpt:
            rows += ["ckpt", "ckpt-fused"]
        sizes = opt_batches.get(name, [])
        if "opt16" in baseline and sizes:
            rows.append(f"opt{sizes[0]}-all")
        rows += [f"opt{b}" for b in sizes]
        groups.append(f"{name}:{','.join(rows)}")
    return ";".join(groups)


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
    groups = parse_rows(args.rows or legacy_rows(args), args.ref_batch)
    device = hb.benchmark_device(args.device)
    t0 = time.time()
    peak = hb.matmul_rate(device)
    card = hb.device_name(device)
    print(f"[speed] {card}: matmul {peak / 1e12:.3g} TFLOP/s", flush=True)
    rows = []
    build_failed = False
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (kept open over the run)

    def emit(row: dict) -> None:
        rows.append(row)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    def not_run(group: Group, lm_logits: str, cfg, why: str) -> None:
        emit(base_row(card, group, lm_logits, cfg) | dict(error=f"not run: {why}"))
        print(f"[speed] {tag(group, lm_logits, cfg)}: not run: {why}", flush=True)

    def past_budget() -> bool:
        return args.budget_s is not None and time.time() - t0 > args.budget_s

    for group in groups:
        shape = hb.model_shape(group.model)
        if past_budget():
            for lm_logits, cfg in group.rows:
                not_run(group, lm_logits, cfg, f"past --budget-s {args.budget_s:.0f} s")
            continue
        t = time.time()
        torch.manual_seed(0)
        model = samples = None
        try:
            model = hb.build_model(shape, device, lora=group.lora)
            samples = hb.load_samples(shape, model.tokenizer, args.data_root, args.num_images, args.workers)
        except (torch.OutOfMemoryError, RuntimeError, TypeError, ValueError) as e:
            if isinstance(e, (TypeError, ValueError)):
                # LoRA overrides this model code does not take: the group's rows say so, the others run
                error = f"build failed: {type(e).__name__}: {first_line(e)}"
                build_failed = True
            elif hb.is_out_of_memory(e):
                error = hb.oom_message(device, during=f"building {group.model}")
            else:
                raise
            print(f"[speed] {tag(group, '', None)}: {error}", flush=True)
            for lm_logits, cfg in group.rows:
                emit(base_row(card, group, lm_logits, cfg) | dict(error=error))
            model = samples = None
            hb.free_memory(device)
            continue
        tokens, sup = supervised_fraction(samples)
        vocab = model.mllm.base_llm().get_output_embeddings().weight.shape[0]
        hidden = model.mllm.hidden_size
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(
            f"[speed] built {group.model} (LoRA {hb.lora_label(group.lora)}; {trainable / 1e6:.1f} M "
            f"trainable parameters) in {time.time() - t:.0f} s: {tokens:.0f} tokens and {sup:.1f} supervised "
            "positions per sample",
            flush=True,
        )
        # (lm_logits, compiled, checkpointing) -> smallest opt batch that OOMed
        failed_at: dict[tuple[str, bool, bool, bool | int], int] = {}
        for lm_logits, cfg in group.rows:
            key = (lm_logits, cfg.compile_llm, cfg.compile_decoder, cfg.gradient_checkpointing)
            if cfg.cache != "off" and key in failed_at and cfg.batch_size >= failed_at[key]:
                not_run(group, lm_logits, cfg, f"batch {failed_at[key]} ran out of memory")
                continue
            if past_budget():
                not_run(group, lm_logits, cfg, f"past --budget-s {args.budget_s:.0f} s")
                continue
            model.lm_logits = lm_logits
            t = time.time()
            try:
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
                    kernel_profile=args.kernel_profile,
                )
            except Exception as e:
                if not (cfg.compile_llm or cfg.compile_decoder):
                    raise
                # torch.compile failed (no compiler, a dynamo / inductor error): the row says so, others run
                traceback.print_exc()
                r = hb.Result(group.model, cfg, error=f"compile failed: {type(e).__name__}: {first_line(e)}")
                build_failed = True
            if r.error and cfg.cache != "off" and r.error.startswith("out of memory"):
                failed_at[key] = min(cfg.batch_size, failed_at.get(key, cfg.batch_size))
            harness_mfu = llm_mfu(
                r, peak, head_rows_per_sample=None, tokens=tokens, hidden=hidden, vocab=vocab
            )
            needed = sup if lm_logits == "supervised" else None
            mfu_needed = llm_mfu(
                r, peak, head_rows_per_sample=needed, tokens=tokens, hidden=hidden, vocab=vocab
            )
            emit(
                base_row(card, group, lm_logits, cfg)
                | dict(
                    trainable_params=trainable,
                    samples_per_s=r.samples_per_s,
                    step_ms=r.step_s * 1e3,
                    peak_gib=r.peak_gib,
                    peak_gb=r.peak_gib * 2**30 / 1e9,
                    llm_ms=sum(r.stages.get(k, 0.0) for k in ("llm_fwd", "llm_bwd")) * 1e3,
                    llm_mfu=harness_mfu,
                    llm_mfu_needed=mfu_needed,
                    pad_frac=r.pad_frac,
                    sup_logits_gib=r.sup_logits_gib,
                    all_logits_gib=r.all_logits_gib,
                    first_step_s=r.first_step_s,
                    compiled_layers=r.compiled_layers,
                    compiled_graphs=r.compiled_graphs,
                    loss=r.loss,
                    error=r.error,
                    stages_ms={k: v * 1e3 for k, v in r.stages.items()},
                    flops=asdict(r.flops) if r.flops else None,
                    kernels=r.kernels,
                )
            )
            figures = r.error or f"{r.samples_per_s:.2f} samples/s, peak {r.peak_gib:.2f} GiB"
            print(f"[speed] {tag(group, lm_logits, cfg)}: {figures} ({time.time() - t:.0f} s)", flush=True)
        model = samples = None
        hb.free_memory(device)
    print()
    print(format_rows(rows, card, peak))
    profiled = [
        (f"{r['model']}/{r['config']}/b{r['batch']}{compiled_suffix(r['compile_llm'], r['compile_decoder'])}",
         r["kernels"])
        for r in rows if r.get("kernels")
    ]  # fmt: skip
    if profiled:
        from bench.harness.kernel_profile import format_kernel_table

        print()
        print(format_kernel_table(profiled))
    print(f"[speed] total {time.time() - t0:.0f} s")
    if out:
        out.close()
    if build_failed:  # a group's model could not be built with its LoRA overrides, or a compile failed
        return 1
    return 0 if any(not r["error"] for r in rows) else 1


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    return (str(e).splitlines() or [""])[0][:200]


def tag(group: Group, lm_logits: str, cfg) -> str:
    """``4b[train_embeddings=new_tokens]/opt/b24/supervised/compiled`` (log lines); the group alone
    (``4b[train_embeddings=new_tokens]``) when ``cfg`` is ``None``."""
    lora = f"[{','.join(f'{k}={v}' for k, v in group.lora.items())}]" if group.lora else ""
    if cfg is None:
        return f"{group.model}{lora}"
    compiled = compiled_suffix(cfg.compile_llm, cfg.compile_decoder)
    return f"{group.model}{lora}/{cfg.name}/b{cfg.batch_size}/{lm_logits}{compiled}"


def compiled_suffix(compile_llm: bool, compile_decoder: bool) -> str:
    """``/compiled`` (LLM decoder layers) and / or ``/cdec`` (mask decoder) for a row's label."""
    return ("/compiled" if compile_llm else "") + ("/cdec" if compile_decoder else "")


def base_row(card: str, group: Group, lm_logits: str, cfg) -> dict:
    """The fields of a row that do not depend on its run."""
    return dict(
        card=card,
        model=group.model,
        lora=dict(cfg.lora),
        lm_logits=lm_logits,
        config=cfg.name,
        batch=cfg.batch_size,
        cache=cfg.cache,
        gradient_checkpointing=cfg.gradient_checkpointing,
        fused_adamw=cfg.fused_adamw,
        compile_llm=cfg.compile_llm,
        compile_decoder=cfg.compile_decoder,
        error="",
    )


def format_rows(rows: list[dict], card: str, peak: float) -> str:
    from bench.harness.speed import lora_label

    lines = [
        f"Issue 19 rows on {card} (bf16 matmul peak measured {peak / 1e12:.3g} TFLOP/s); samples/s and peak "
        "from the throughput pass, LLM ms (forward+backward) from the profiling pass",
        "| card | model | LoRA | LM head | config | compiled | batch | cache | samples/s | step ms "
        "| peak GiB | peak GB | LLM ms | LLM MFU % | LLM MFU* % | pad % | sup. logits MiB | all logits MiB "
        "| 1st step s | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compiled = " + ".join(
            [
                n
                for n, on in (("LLM layers", r["compile_llm"]), ("mask decoder", r.get("compile_decoder")))
                if on
            ]
        )
        if compiled and not r["error"]:
            graphs = r["compiled_graphs"]
            compiled += f", {graphs} graph" + ("s" if graphs != 1 else "")
        head = f"| {r['card']} | {r['model']} | {lora_label(r['lora'])} | {r['lm_logits']} | {r['config']} "
        head += f"| {compiled} | {r['batch']} | {r['cache']} "
        if r["error"]:
            lines.append(f"{head}| {r['error']} | | | | | | | | | | | |")
            continue
        lines.append(
            head
            + f"| {r['samples_per_s']:.2f} | {r['step_ms']:.1f} | {r['peak_gib']:.2f} | {r['peak_gb']:.2f} "
            f"| {r['llm_ms']:.1f} | {r['llm_mfu']:.1f} | {r['llm_mfu_needed']:.1f} "
            f"| {r['pad_frac'] * 100:.1f} | {r['sup_logits_gib'] * 1024:.1f} "
            f"| {r['all_logits_gib'] * 1024:.1f} | {r['first_step_s']:.1f} | {r['loss']:.3f} |"
        )
    lines += [
        "LLM MFU: the harness's LLM FLOPs (head at every position); LLM MFU*: the head counted only at the "
        "supervised positions for the 'supervised' rows (the FLOPs that path needs).",
        "pad %: padded positions / all positions of the step's batch (the positions padding-free packing "
        "would remove). sup. / all logits MiB: one fp32 copy of the step's LM logits at the supervised "
        "positions (N x V x 4 bytes; what a fused linear cross-entropy would not materialise) / at every "
        "position of the padded batch (B x L x V x 4).",
        "1st step s: wall time of the first warm-up step (it fills the feature cache, if any, and with "
        "'compiled' compiles). compiled: the LLM decoder layers (RunConfig.compile_llm) and / or the SAM2 "
        "mask decoder (RunConfig.compile_decoder) compiled, with the graphs dynamo compiled over the row.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
