"""Operator profile of one reference training step of the benchmark harness model (CPU or CUDA).

Builds the harness model (:func:`bench.harness.speed.build_model`) at a "mid" shape that steps in seconds
on a CPU (the tiny preset's InternViT and SAM2, a Qwen2 LLM with the 1b/4b benchmark vocabulary, so the
embedding / head copies have their real row count), runs ``--warmup`` steps of
:class:`bench.harness.speed.Trainer` (batch ``--batch``, no feature cache) and profiles one more with
``torch.profiler``. Writes a JSON file with, per ATen op, its call count and self CPU time, the step's
losses and the number of device-host syncs seen as ops (``aten::item``, ``aten::_local_scalar_dense``,
``aten::nonzero``), so two commits (``--root``: a checkout or ``git worktree``) or two LoRA settings can be
compared op by op::

    .venv/bin/python bench/harness/op_profile.py --root /tmp/base --out /tmp/base.json
    .venv/bin/python bench/harness/op_profile.py --out /tmp/head.json --lora train_embeddings=new_tokens
    .venv/bin/python bench/harness/op_profile.py --compare /tmp/base.json /tmp/head.json

``--root`` is put first on ``sys.path``: the harness and the model come from that checkout (a checkout
whose ``build_model`` takes no ``lora`` argument refuses ``--lora``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: ops that make the host wait for the device (a sync on CUDA; on the CPU they show the same call sites)
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")
#: ``torch.tensor(data)`` inside the step: on CUDA the host tensor's ``.to(device)`` (``non_blocking=False``)
#: is a blocking copy, i.e. a sync (``c10::cuda::memcpy_and_sync``)
HOST_TENSOR_OP = "aten::lift_fresh"


def parse_value(text: str) -> object:
    """``True`` / ``False`` / an int, else the string (``--lora`` values)."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return text


def mid_shape(hb: object, args: argparse.Namespace) -> object:
    """The tiny preset with a bigger LLM: ``--hidden`` wide, ``--layers`` deep, the benchmark vocabulary."""
    tiny = hb.model_shape("tiny")
    llm = dict(tiny.llm_config)
    llm.update(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
    )
    vision = dict(tiny.vision_config)
    if args.vit_layers:
        vision["num_hidden_layers"] = args.vit_layers
    sam2 = tiny.sam2_overrides
    if args.sam2_hiera_l_depth:
        # Hiera-L's block counts and global-attention blocks (sam2_hiera_l.yaml) at the tiny width
        sam2 = json.loads(json.dumps(sam2))
        sam2["image_encoder"]["trunk"].update(stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43])
    return dataclasses.replace(
        tiny, name="mid", vision_config=vision, llm_config=llm, sam2_overrides=sam2, lora_r=args.lora_r
    )


def profile(args: argparse.Namespace) -> dict:
    """One profiled reference step (see the module docstring); returns the JSON record."""
    sys.path.insert(0, str(Path(args.root).resolve()))
    import torch

    from bench.harness import speed as hb

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _profile(args, torch, hb)
    finally:
        torch.set_num_threads(threads)


def _profile(args: argparse.Namespace, torch: Any, hb: Any) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(args.device)
    shape = mid_shape(hb, args)
    lora = dict(parse_value_pair(kv) for kv in args.lora)
    torch.manual_seed(args.seed)
    model = hb.build_model(shape, device, lora=lora) if lora else hb.build_model(shape, device)
    samples = hb.load_samples(
        shape, model.tokenizer, args.data_root, args.batch * (args.warmup + 1), workers=0
    )
    batches = hb.make_batches(samples, args.batch, args.warmup + 1, pin=False)
    cfg = hb.RunConfig("ref", args.batch, lora=lora) if lora else hb.RunConfig("ref", args.batch)
    model.train()
    trainer = hb.Trainer(model, cfg, device)
    losses = []
    torch.manual_seed(args.seed + 1)
    for b in batches[:-1]:
        losses.append(float(trainer.step(b)))
    timed = []
    for i in range(args.timed):
        t = time.perf_counter()
        float(trainer.step(batches[i % len(batches)]))
        timed.append(time.perf_counter() - t)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with torch_profile(activities=activities, record_shapes=False) as prof:
        loss = trainer.step(batches[-1])
        losses.append(float(loss))
    wall = time.perf_counter() - t0
    ops = {
        e.key: {
            "count": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "cpu_ms": e.cpu_time_total / 1e3,
        }
        for e in prof.key_averages()
    }
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainer.params)
    return {
        "root": str(Path(args.root).resolve()),
        "imported": [hb.__file__, sys.modules[type(model).__module__].__file__],
        "lora": {k: str(v) for k, v in lora.items()},
        "shape": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "lora_r": args.lora_r},
        "batch": args.batch,
        "losses": losses,
        "parameters": n_params,
        "trainable": n_train,
        "trainable_tensors": len(trainer.params),
        "wall_s": wall,
        "timed_steps_s": timed,
        "timed_median_s": statistics.median(timed) if timed else None,
        "syncs": {k: ops[k]["count"] for k in SYNC_OPS if k in ops},
        "host_tensors": ops.get(HOST_TENSOR_OP, {}).get("count", 0),
        "ops": ops,
    }


def parse_value_pair(text: str) -> tuple[str, object]:
    """``key=value`` of ``--lora``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--lora {text!r}: expected key=value")
    return key, parse_value(value)


def summary(label: str, path: Path, r: dict) -> str:
    """One line about a profile: where it came from, the step's time and losses, the trainable set."""
    return (
        f"{label}: {path} (root {r['root']}, lora {r['lora']}): profiled step {r['wall_s']:.3f} s, "
        f"timed median {r.get('timed_median_s')} s, losses {r['losses']}, trainable {r['trainable']:,} in "
        f"{r['trainable_tensors']} tensors of {r['parameters']:,}, syncs {r['syncs']}, host tensors "
        f"{r['host_tensors']}"
    )


def compare(a_path: Path, b_path: Path, top: int) -> str:
    """Op-by-op table of two profiles: count and self CPU ms of each, ordered by the larger self time."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    lines = [
        summary("A", a_path, a),
        summary("B", b_path, b),
        f"{'op':<48}{'A n':>7}{'B n':>7}{'A self ms':>11}{'B self ms':>11}{'B-A ms':>9}",
    ]
    keys = sorted(
        set(a["ops"]) | set(b["ops"]),
        key=lambda k: (
            -max(a["ops"].get(k, {}).get("self_cpu_ms", 0), b["ops"].get(k, {}).get("self_cpu_ms", 0))
        ),
    )
    for k in keys[:top]:
        oa, ob = a["ops"].get(k, {}), b["ops"].get(k, {})
        ta, tb = oa.get("self_cpu_ms", 0.0), ob.get("self_cpu_ms", 0.0)
        lines.append(
            f"{k[:47]:<48}{oa.get('count', 0):>7}{ob.get('count', 0):>7}{ta:>11.1f}{tb:>11.1f}{tb - ta:>9.1f}"
        )
    diff = [
        k for k in sorted(set(a["ops"]) | set(b["ops"]))
        if a["ops"].get(k, {}).get("count", 0) != b["ops"].get(k, {}).get("count", 0)
    ]  # fmt: skip
    lines.append(f"ops whose call count differs ({len(diff)}):")
    for k in diff:
        lines.append(f"  {k}: {a['ops'].get(k, {}).get('count', 0)} -> {b['ops'].get(k, {}).get('count', 0)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="checkout the harness and the model are imported from")
    p.add_argument("--out", type=Path, help="JSON file of the profile")
    p.add_argument(
        "--compare", nargs=2, type=Path, metavar=("A", "B"), help="print two profiles side by side"
    )
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--lora", action="append", default=[], help="LoRA override key=value (repeatable)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=151674, help="LLM rows (the 1b/4b benchmark vocabulary)")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--vit-layers", type=int, default=0, help="InternViT depth (0: the tiny preset's)")
    p.add_argument("--sam2-hiera-l-depth", action="store_true", help="SAM2 trunk with Hiera-L's 48 blocks")
    p.add_argument("--timed", type=int, default=0, help="un-profiled steps timed before the profiled one")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        sys.stdout.write(compare(*args.compare, top=args.top) + "\n")
        return 0
    if args.out is None:
        raise SystemExit("--out is required to profile (or give --compare A B)")
    record = profile(args)
    args.out.write_text(json.dumps(record, indent=1))
    sys.stdout.write(
        f"{args.out}: step {record['wall_s']:.3f} s, timed median {record['timed_median_s']}, losses "
        f"{record['losses']}, syncs {record['syncs']}, host tensors {record['host_tensors']}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
