"""Training speed side by side on one device: the official Sa2VA training step vs the toolkit's.

Same shapes (Sa2VA-1B: InternViT-300M + Qwen2.5-0.5B + SAM2 Hiera-L; Sa2VA-4B: + Qwen2.5-3B; random
weights), same samples (the bundled CHASE_DB1 images preprocessed by the toolkit's dataset: one 448 tile,
the 1024 SAM2 input, 5 masks per sample), same LoRA (r=128, alpha 256, dropout 0.05, embed/head trained),
same trainable parts, AdamW lr 4e-5 with gradient clipping 1.0, warm-up steps excluded.

Sides (each in its own process: both code bases name their package ``projects.sa2va``):

* ``official``: the official training ``Sa2VAModel`` (bench/official/src, see setup_official.sh) built as
  its configs build it (``InternVLMLLM`` loading an InternVL folder written from the toolkit model's
  random weights, ``SAM2TrainRunner``, the mmdet-style losses, ``loss_sample_points=True``), with its own
  precision and attention: ``--official-step amp`` is the official config's ``AmpOptimWrapper`` (bf16
  autocast over the weights as the official code leaves them); ``ds`` is ``tools/dist.sh``'s DeepSpeed
  ZeRO-2 with bf16 (xtuner's ``deepspeed_zero2.json``; needs ``deepspeed`` importable). Attention: what
  the official code picks (flash-attention 2 when ``flash_attn`` imports, else eager); ``--official-attn
  sdpa`` switches the LLM to PyTorch SDPA after building (an explicit deviation, for a fused-kernel
  comparison when flash-attn is missing).
* ``ref`` / ``ckpt`` / ``opt``: the toolkit's reference step; the same with gradient checkpointing of the
  LLM's decoder layers (what the official ``InternVL_V1_5`` always turns on: xtuner ``model/internvl.py``,
  ``self.gradient_checkpointing_enable()`` in its constructor); the optimised step (bench/harness/speed.py).

Each side runs at batch ``--first-batch`` (2) and then at doubling batches until one runs out of memory,
passes ``--max-batch`` or reaches its time limit; after an out-of-memory batch it bisects between the largest
batch that ran and that one over the multiples of ``--refine`` (8), e.g. 24 between 16 and 32 (``sweep``,
through the toolkit's batch search); the DeepSpeed official step measures ``--first-batch`` only (one batch
per process). The largest batch measured is reported with the reason its
sweep stopped. Prints one table (samples/s, peak memory, ratio to the official step at the same
batch) and writes ``--json``.

    # GPU (official source carried in bench/official/src, kit installed to /tmp/site):
    PYTHONPATH=/tmp/site python3 bench/official/speed_side_by_side.py --models 1b,4b --json /tmp/out.json
    # CPU smoke run (tiny shapes, 1 step):
    .venv/bin/python bench/official/speed_side_by_side.py --tiny --steps 1 --warmup 1 --max-batch 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_SRC = HERE / "src"
DEFAULT_OVERLAY = Path("/tmp/official_overlay")
SAM2_CKPT = "bench_sam2.pt"
OFFICIAL_SPECIAL_TOKENS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]  # sa2va_in30_*.py


def batch_sizes(first: int, largest: int) -> list[int]:
    """``first``, then doubling, up to ``largest`` (e.g. 2, 4, 8, ... )."""
    out, b = [], first
    while b <= largest:
        out.append(b)
        b *= 2
    return out


def load_batch_finder():
    """The toolkit's :mod:`projects.sa2va.engine.batch_finder`, loaded from its file under another name (in
    the official side's process ``projects`` is the official package)."""
    import importlib.util

    name = "sa2va_toolkit_batch_finder"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "projects/sa2va/engine/batch_finder.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def sweep(
    side: str,
    first: int,
    largest: int,
    measure: Callable[[int], dict],
    refine: int,
    save: Callable[[list[dict]], None],
) -> list[dict]:
    """Rows of ``measure(batch)`` at ``first``, then doubling up to ``largest`` until a batch runs out of
    memory, then bisection between the largest batch that ran and the first that did not, over the multiples
    of ``refine`` (0: no bisection), through the toolkit's batch search
    (:func:`projects.sa2va.engine.batch_finder.search_batch`). ``measure`` returns the batch's row and raises
    an out-of-memory error where it does not fit (recorded as an ``error`` row); another error is recorded
    the same way and ends the sweep.
    ``save(rows)`` runs after every batch (the rows so far survive a timeout)."""
    bf = load_batch_finder()
    rows: list[dict] = []
    cands = set(batch_sizes(first, largest))
    if refine > 0:
        cands |= {b for b in range(refine, largest + 1, refine) if b >= first}

    def trial(bsz: int):
        try:
            rows.append(measure(bsz))
        except Exception as e:
            if bf.is_out_of_memory(e):
                error = f"out of memory at batch {bsz}"
            else:
                traceback.print_exc()
                error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            rows.append({"side": side, "batch": bsz, "error": error})
            save(rows)
            raise
        save(rows)
        return bf.Measure()

    # an error other than out of memory is recorded in its row (traceback in the log); the sweep ends there
    with contextlib.suppress(Exception):
        bf.search_batch(trial, start=first, max_batch=largest, candidates=sorted(cands), bisect=refine > 0)
    return rows


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- preparation (toolkit environment) --------------------------------------------------------------------
def prepare(args: argparse.Namespace, name: str, work: Path) -> None:
    """Write the official side's inputs for model ``name``: InternVL folder, SAM2 checkpoint, samples."""
    sys.path.insert(0, str(ROOT))
    from bench.harness import speed as hb
    from bench.official.bridge import (
        folder_state,
        hydra_overrides,
        internvl_folder_config,
        write_internvl_folder,
    )

    shape = hb.model_shape(name)
    # Built on the benchmark device with the seed the toolkit sides use: the official side gets the very
    # weights the toolkit sides train (and a 4B random build takes seconds on a GPU, minutes on the host).
    device = hb.benchmark_device(args.device)
    torch.manual_seed(0)
    model = hb.build_model(shape, device)
    folder_config = dict(internvl_folder_config(model.mllm, model.mllm.template), torch_dtype="bfloat16")
    tokenizer = model.tokenizer
    state = {k: v.cpu() for k, v in torch.nn.Module.state_dict(model).items()}
    del model
    free(device)
    folder = write_internvl_folder(
        work / "internvl_folder",
        config=folder_config,
        weights={k: v.to(torch.bfloat16) for k, v in folder_state(state).items()},
        tokenizer=tokenizer,
        official_src=args.src,
    )
    prefix = "grounding_encoder.sam2_model."
    (work / "pretrained/sam2").mkdir(parents=True, exist_ok=True)
    torch.save(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
        work / "pretrained/sam2" / SAM2_CKPT,
    )
    samples = hb.load_samples(shape, tokenizer, args.data_root, args.num_images, workers=0)
    from projects.sa2va.pixels import normalize_pixels

    official = [
        {
            "input_ids": s["input_ids"],
            "labels": s["labels"],
            "pixel_values": normalize_pixels(s["pixel_values"])
            if s["pixel_values"].dtype == torch.uint8
            else s["pixel_values"],
            "g_pixel_values": s["g_pixel_values"],  # uint8 [3, 1024, 1024]; made float in [0, 255] per step
            "masks": s["masks"],
        }
        for s in samples
    ]
    torch.save(
        {
            "folder": str(folder),
            "sam2_overrides": hydra_overrides(shape.sam2_overrides or {}),
            "lora_r": shape.lora_r,
            "pad_id": tokenizer.pad_token_id,
            "samples": official,
        },
        work / "official_inputs.pt",
    )


# --- the official side (official environment) ------------------------------------------------------------
def official_batch(samples: list[dict], start: int, bsz: int, pad_id: int, device: torch.device) -> dict:
    """The official collate's layout: right-padded ids, per-sample lists of pixels and masks."""
    items = [samples[(start + j) % len(samples)] for j in range(bsz)]
    length = max(int(s["input_ids"].shape[0]) for s in items)
    ids = torch.full((bsz, length), pad_id, dtype=torch.long)
    labels = torch.full((bsz, length), -100, dtype=torch.long)
    for j, s in enumerate(items):
        n = s["input_ids"].shape[0]
        ids[j, :n] = s["input_ids"]
        labels[j, :n] = s["labels"]
    attn = ids.ne(pad_id)
    return {
        "pixel_values": [s["pixel_values"].to(device, non_blocking=True) for s in items],
        "input_ids": ids.to(device),
        "position_ids": torch.arange(length)[None].expand(bsz, -1).contiguous().to(device),
        "attention_mask": attn.to(device),
        "labels": labels.to(device),
        "g_pixel_values": [s["g_pixel_values"].to(device).float() for s in items],
        "masks": [s["masks"].to(device).float() for s in items],
        "frames_per_batch": [1] * bsz,
    }


def build_official_model(inp: dict, device: torch.device, attn: str):
    from peft import LoraConfig
    from third_parts.mmdet.models.losses import CrossEntropyLoss, DiceLoss
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER

    from projects.sa2va.models import InternVLMLLM, Sa2VAModel, SAM2TrainRunner

    folder, r = inp["folder"], inp["lora_r"]
    cfg = dict(
        type=Sa2VAModel,
        training_bs=2,
        special_tokens=OFFICIAL_SPECIAL_TOKENS,
        loss_sample_points=True,
        frozen_sam2_decoder=False,
        mllm=dict(
            type=InternVLMLLM,
            model_path=folder,
            freeze_llm=True,
            freeze_visual_encoder=True,
            llm_lora=dict(
                type=LoraConfig,
                r=r,
                lora_alpha=2 * r,
                lora_dropout=0.05,
                bias="none",
                task_type="CAUSAL_LM",
                modules_to_save=["embed_tokens", "lm_head"],
            ),
        ),
        tokenizer=dict(
            type=AutoTokenizer.from_pretrained,
            pretrained_model_name_or_path=folder,
            trust_remote_code=True,
            padding_side="right",
        ),
        grounding_encoder=dict(
            type=SAM2TrainRunner,
            cfg_path="sam2_hiera_l.yaml",
            ckpt_path=SAM2_CKPT,
            hydra_overrides_extra=inp["sam2_overrides"],
        ),
        loss_mask=dict(type=CrossEntropyLoss, use_sigmoid=True, reduction="mean", loss_weight=2.0),
        loss_dice=dict(
            type=DiceLoss,
            use_sigmoid=True,
            activate=True,
            reduction="mean",
            naive_dice=True,
            eps=1.0,
            loss_weight=0.5,
        ),
    )
    model = BUILDER.build(cfg)
    inner = model.mllm.model
    # Prediction-only parts of the official HF class used as InternVL remote code (a Hiera-L SAM2 and a
    # projection): not in the training forward and not in the official InternVL folder's model.
    del inner.grounding_encoder, inner.text_hidden_fcs
    llm_attn = inner.language_model.config._attn_implementation
    if attn == "sdpa":
        inner.language_model.config._attn_implementation = "sdpa"
        llm_attn = "sdpa (switched)"
    return model.to(device), llm_attn


def official_worker(args: argparse.Namespace, work: Path) -> None:
    import torch.distributed as dist

    device = torch.device(args.device)
    inp = torch.load(work / "official_inputs.pt", weights_only=False)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"file://{work / 'pg'}", rank=0, world_size=1)
    os.chdir(work)  # SAM2TrainRunner reads ./pretrained/sam2/<ckpt>
    import projects.sa2va.models.sa2va as off_sa2va

    if not Path(off_sa2va.__file__).resolve().is_relative_to(args.src.resolve()):
        raise ImportError(f"projects.sa2va resolved to {off_sa2va.__file__}, not {args.src}")
    import xtuner

    torch.manual_seed(0)
    model, llm_attn = build_official_model(inp, device, args.official_attn)
    step_kind = args.official_step

    def measure(bsz: int) -> dict:
        row = {
            "side": "official",
            "batch": bsz,
            "step": step_kind,
            "llm_attn": llm_attn,
            "xtuner": xtuner.__version__,
        }
        engine = opt = None
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            if step_kind == "ds":
                import deepspeed

                one_process_group_env(os.environ)  # what torchrun / the deepspeed launcher would set
                ds_cfg = {
                    "train_micro_batch_size_per_gpu": bsz,
                    "gradient_accumulation_steps": 1,
                    "gradient_clipping": 1.0,
                    "zero_allow_untested_optimizer": True,
                    "zero_force_ds_cpu_optimizer": False,
                    "zero_optimization": {"stage": 2, "overlap_comm": True},
                    "bf16": {"enabled": True},
                }
                opt = torch.optim.AdamW(params, lr=4e-5, betas=(0.9, 0.999), weight_decay=0.05)
                engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
            else:
                opt = torch.optim.AdamW(params, lr=4e-5, betas=(0.9, 0.999), weight_decay=0.05)

            def step(i: int, bsz: int = bsz, engine=engine, opt=opt, params=params) -> None:
                data = official_batch(inp["samples"], i * bsz, bsz, inp["pad_id"], device)
                if engine is not None:
                    losses = engine(data, mode="loss")
                    engine.backward(sum(v for k, v in losses.items() if "loss" in k))
                    engine.step()
                    return
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    losses = model(data, mode="loss")
                    loss = sum(v for k, v in losses.items() if "loss" in k)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            model.train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for i in range(args.warmup):
                step(i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(args.warmup + i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / args.steps
            row.update(samples_per_s=bsz / dt, step_s=dt)
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        finally:
            engine = opt = None
            model.zero_grad(set_to_none=True)
            free(device)
        return row

    def save(rows: list[dict]) -> None:
        print(json.dumps(rows[-1]), flush=True)
        (work / "official_result.json").write_text(json.dumps(rows))

    # DeepSpeed keeps its engine state: one batch per process
    largest = args.first_batch if step_kind == "ds" else args.max_batch
    rows = sweep("official", args.first_batch, largest, measure, args.refine, save)
    (work / "official_result.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


# --- the toolkit side (toolkit environment) ---------------------------------------------------------------
def ours_worker(args: argparse.Namespace, name: str, work: Path, side: str) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.harness import speed as hb

    device = hb.benchmark_device(args.device)
    shape = hb.model_shape(name)
    torch.manual_seed(0)
    model = hb.build_model(shape, device)
    samples = hb.load_samples(shape, model.tokenizer, args.data_root, args.num_images, workers=args.workers)
    bf = load_batch_finder()

    def measure(bsz: int) -> dict:
        if side == "ref":
            cfg = hb.RunConfig("ref", bsz)
        elif side == "ckpt":  # like the official step, which always checkpoints its LLM's decoder layers
            cfg = hb.RunConfig("ckpt", bsz, gradient_checkpointing=True)
        else:
            cfg = hb.RunConfig("opt", bsz, cache="memory", fused_adamw=True)
        r = hb.run_one(
            model,
            shape,
            cfg,
            samples,
            device=device,
            steps=args.steps,
            warmup=args.warmup,
            profile_steps=0,
            cache_dir=None,
        )
        if r.error and bf.is_out_of_memory(RuntimeError(r.error)):
            raise torch.OutOfMemoryError(r.error)
        if r.error:
            raise RuntimeError(r.error)
        return {
            "side": side,
            "batch": bsz,
            "samples_per_s": r.samples_per_s,
            "step_s": r.step_s,
            "peak_gib": r.peak_gib,
        }

    def save(rows: list[dict]) -> None:
        print(json.dumps(rows[-1]), flush=True)
        (work / f"{side}_result.json").write_text(json.dumps(rows))

    rows = sweep(side, args.first_batch, args.max_batch, measure, args.refine, save)
    (work / f"{side}_result.json").write_text(json.dumps(rows))


def one_process_group_env(env: dict[str, str] | os._Environ) -> None:
    """Fill in the variables a launcher sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) for a group of this one process, keeping any already set: ``deepspeed.initialize``
    asserts ``LOCAL_RANK`` and initialises the process group from them (the official recipe runs under
    ``torchrun`` through its ``tools/dist.sh``)."""
    import socket

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        env.setdefault(key, value)
    if "MASTER_PORT" not in env:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            env["MASTER_PORT"] = str(sock.getsockname()[1])


# --- orchestration ----------------------------------------------------------------------------------------
def child_env(pythonpath: list[str]) -> dict[str, str]:
    """The environment of a side's process: ``pythonpath`` first, then the inherited ``PYTHONPATH`` without
    this checkout. The official source's ``projects`` is a namespace package, and a regular package of that
    name anywhere on the path (the toolkit's ``projects/__init__.py``) wins over it whatever the order, so
    a ``PYTHONPATH`` that names the checkout (``PYTHONPATH=/tmp/site:$PWD``) would give the official side the
    toolkit's code; the toolkit sides name the checkout in ``pythonpath`` themselves."""
    env = dict(os.environ)
    inherited = [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT
    ]  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(pythonpath + inherited)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_child(argv: list[str], pythonpath: list[str], log: Path, timeout: float) -> int:
    env = child_env(pythonpath)
    with open(log, "w") as fh:
        try:
            return subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *argv],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return 124


def sweep_end(rows: list[dict], side: str, max_batch: int | None) -> str:
    """Why ``side``'s batch sweep stopped: its error row (out of memory, time limit), else the cap."""
    errors = [r for r in rows if r["side"] == side and "error" in r]
    if errors:
        e = errors[-1]
        named = not e["batch"] or f"batch {e['batch']}" in e["error"]
        return e["error"] + ("" if named else f" at batch {e['batch']}")
    return f"the sweep's cap, --max-batch {max_batch}" if max_batch else "the sweep's cap"


def summarise(name: str, rows: list[dict], device_name: str, max_batch: int | None = None) -> list[str]:
    off = {r["batch"]: r for r in rows if r["side"] == "official" and "error" not in r}
    lines = [
        f"{name} on {device_name}",
        f"{'side':<10}{'batch':>6}{'samples/s':>11}{'peak GiB':>10}{'x official@b':>14}  note",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['side']:<10}{r['batch']:>6}{'':>11}{'':>10}{'':>14}  {r['error']}")
            continue
        base = off.get(r["batch"])
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}" if base else "-"
        note = (
            f"step={r.get('step')} llm_attn={r.get('llm_attn')} xtuner={r.get('xtuner')}"
            if r["side"] == "official"
            else ""
        )
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else "-"
        lines.append(
            f"{r['side']:<10}{r['batch']:>6}{r['samples_per_s']:>11.2f}{peak:>10}{ratio:>14}  {note}"
        )
    fits: dict[str, int] = {}
    for r in rows:
        if "error" not in r:
            fits[r["side"]] = max(fits.get(r["side"], 0), r["batch"])
    lines.append(
        "largest batch measured: "
        + ", ".join(f"{side} {b} ({sweep_end(rows, side, max_batch)})" for side, b in fits.items())
    )
    best = {
        side: next(r for r in rows if r["side"] == side and r["batch"] == b and "error" not in r)
        for side, b in fits.items()
    }
    if "official" in best:
        base = best["official"]["samples_per_s"]
        lines.append(
            "at the largest batch measured per side, x official: "
            + ", ".join(f"{k} {r['samples_per_s'] / base:.2f}" for k, r in best.items() if k != "official")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="1b,4b")
    p.add_argument("--tiny", action="store_true", help="the tiny shapes (CPU smoke run)")
    p.add_argument("--sides", default="official,ref,ckpt,opt")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--first-batch", type=int, default=2, help="the sweep's first batch (then doubling)")
    p.add_argument("--max-batch", type=int, default=64, help="stop doubling the batch here")
    p.add_argument(
        "--refine",
        type=int,
        default=8,
        help="after an out-of-memory batch, bisect over the multiples of this (0: doubling only)",
    )
    p.add_argument("--official-step", choices=("amp", "ds"), default="amp")
    p.add_argument("--official-attn", choices=("auto", "sdpa"), default="auto")
    p.add_argument("--num-images", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    p.add_argument("--src", type=Path, default=DEFAULT_SRC)
    p.add_argument("--overlay", type=Path, default=DEFAULT_OVERLAY)
    p.add_argument("--work", type=Path, default=Path("/tmp/sa2va_side_by_side"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per side and model")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run: a side that would start later is skipped (its row says so) and each "
        "side's timeout is cut to what is left",
    )
    p.add_argument(
        "--reuse-inputs",
        action="store_true",
        help="keep the official inputs already in --work (from an earlier run with the same models)",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=("prepare", "official", "ref", "ckpt", "opt"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        work = args.work / args.model
        if args.worker == "prepare":
            prepare(args, args.model, work)
        elif args.worker == "official":
            official_worker(args, work)
        else:
            ours_worker(args, args.model, work, args.worker)
        return 0

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "official" in sides and not (args.src / "projects/sa2va/models/sa2va.py").is_file():
        raise SystemExit(f"{args.src}: no official source; run bench/official/setup_official.sh")
    names = ["tiny"] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    common = [
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--first-batch={args.first_batch}",
        f"--max-batch={args.max_batch}",
        f"--refine={args.refine}",
        f"--official-step={args.official_step}",
        f"--official-attn={args.official_attn}",
        f"--num-images={args.num_images}",
        f"--workers={args.workers}",
        f"--data-root={args.data_root}",
        f"--src={args.src}",
        f"--work={args.work}",
        f"--device={args.device}",
    ]
    ours_path = [str(ROOT)]
    off_path = [str(x) for x in (args.overlay, args.src) if x.is_dir()]
    report, all_rows = [], {}
    t_start = time.time()

    def time_left() -> float:
        if args.budget is None:
            return args.timeout
        return min(args.timeout, args.budget - (time.time() - t_start))

    for name in names:
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        if "official" in sides and not (args.reuse_inputs and (work / "official_inputs.pt").is_file()):
            t = time.time()
            rc = run_child(
                ["--worker=prepare", f"--model={name}", *common],
                ours_path,
                work / "prepare.log",
                max(time_left(), 1.0),
            )
            if rc:
                raise SystemExit(
                    f"preparing the official inputs failed (exit {rc}); see {work / 'prepare.log'}"
                )
            print(f"[side-by-side] {name}: official inputs written in {time.time() - t:.0f} s", flush=True)
        for side in sides:
            t = time.time()
            path = off_path if side == "official" else ours_path
            log = work / f"{side}.log"
            left = time_left()
            if left < 30:
                skip = f"skipped: {left:.0f} s of the --budget left"
                rows.append({"side": side, "batch": 0, "error": skip})
                print(f"[side-by-side] {name}/{side}: skipped (budget)", flush=True)
                continue
            res = work / f"{side}_result.json"
            res.unlink(missing_ok=True)
            rc = run_child([f"--worker={side}", f"--model={name}", *common], path, log, left)
            done = json.loads(res.read_text()) if res.is_file() else []
            rows += done
            if rc == 124 and done:  # timed out after some batches: those rows stand
                last = max(r["batch"] for r in done)
                rows.append({"side": side, "batch": last * 2, "error": "timed out (the side's time limit)"})
            elif rc or not done:
                rows.append({"side": side, "batch": 0, "error": f"failed (exit {rc}); see {log}"})
                sys.stderr.write(log.read_text()[-3000:])
            print(f"[side-by-side] {name}/{side}: done in {time.time() - t:.0f} s", flush=True)
        all_rows[name] = rows
        report += [*summarise(name, rows, device_name, args.max_batch), ""]
    print("\n".join(report))
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "rows": all_rows}, indent=1))
    return 1 if any("error" in r and r["batch"] == 0 for rs in all_rows.values() for r in rs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
