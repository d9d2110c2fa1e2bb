"""Training speed and memory of Sa2VA at real shapes (random weights), reference vs optimised step.

    # one H200 (the repo is the cwd; the GPU wheel kit installed to /tmp/site, see ../shared/gpu/README.md)
    PYTHONPATH=/tmp/site:$PWD python3 bench/benchmark.py --models 1b,4b --configs ref,opt,opt-b2
    # CPU smoke run
    python bench/benchmark.py --tiny --steps 2

Builds each model once (``Sa2VAModel`` with InternViT-300M + Qwen2.5-0.5B / -3B + SAM2 Hiera-L, LoRA
r=128, bf16 frozen weights and fp32 trainable ones on CUDA), trains it on preprocessed samples of the
bundled data under each configuration and prints one table (see bench/harness/speed.py).

A configuration that runs out of memory (CUDA, or the CPU allocator) becomes the row "out of memory at
batch N on <device name> (<stage>)"; memory is freed and the next configuration runs, so the table is
always completed (a model that cannot even be built gets "out of memory on <device name> (building
<model>)" for each of its configurations). Exit
status: 0 when at least one row has figures, 1 when every row ran out of memory. Any other error stops
the run with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="1b,4b", help="comma list of 1b, 4b (ignored with --tiny)")
    p.add_argument("--configs", default="ref,opt", help="comma list of ref, opt, opt-b2, ckpt")
    p.add_argument("--tiny", action="store_true", help="the tiny CPU model instead of the real shapes")
    p.add_argument("--batch-size", type=int, default=16, help="batch of the optimised configs")
    p.add_argument("--ref-batch-size", type=int, default=2, help="batch of the reference config")
    p.add_argument("--steps", type=int, default=20, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the cache-filling pass")
    p.add_argument("--profile-steps", type=int, default=3, help="synchronised per-stage steps")
    p.add_argument("--num-images", type=int, default=20, help="distinct images (bundled data)")
    p.add_argument("--data-root", default=str(ROOT / "data/chase_db1"))
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="preprocessing workers")
    p.add_argument(
        "--compile",
        action="store_true",
        help="regional torch.compile of the LLM (each decoder layer, one shared graph) in the opt configs",
    )
    p.add_argument("--cache-dir", default="/tmp/sa2va_feature_cache", help="for a 'disk' cache")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mmengine.logging import MMLogger

    from bench.harness import speed as hb

    MMLogger.get_instance("sa2va_benchmark", log_level="WARNING")
    device = hb.benchmark_device(args.device)
    names = ["tiny"] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    configs = hb.run_configs(
        [c.strip() for c in args.configs.split(",") if c.strip()],
        ref_batch=args.ref_batch_size,
        opt_batch=args.batch_size,
        compile_llm=args.compile,
    )
    t0 = time.time()
    peak = hb.matmul_rate(device)
    dev_name = hb.device_name(device)
    print(f"[benchmark] {dev_name}: matmul {peak / 1e12:.3g} TFLOP/s ({time.time() - t0:.0f} s)", flush=True)
    results = []
    for name in names:
        shape = hb.model_shape(name)
        t = time.time()
        torch.manual_seed(0)
        model = samples = None
        try:
            model = hb.build_model(shape, device)
            samples = hb.load_samples(shape, model.tokenizer, args.data_root, args.num_images, args.workers)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not hb.is_out_of_memory(e):
                raise
            error = hb.oom_message(device, during=f"building {name}")
            print(f"[benchmark] {name}: {error}: {str(e).splitlines()[0][:200]}", flush=True)
            results += [hb.Result(shape.name, cfg, error=error) for cfg in configs]
            hb.free_memory(device)
            continue
        print(f"[benchmark] built {name} + {len(samples)} samples in {time.time() - t:.0f} s", flush=True)
        for cfg in configs:
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
                cache_dir=args.cache_dir,
            )
            results.append(r)
            figures = r.error or f"{r.samples_per_s:.2f} samples/s"
            print(f"[benchmark] {name}/{cfg.name}: {figures} ({time.time() - t:.0f} s)", flush=True)
        model = samples = None
        hb.free_memory(device)
    print()
    print(hb.format_table(results, peak, dev_name))
    for line in hb.target_lines(results):
        print(line)
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"[benchmark] {failed} of {len(results)} configuration(s) ran out of memory")
    print(f"[benchmark] total {time.time() - t0:.0f} s")
    return 1 if results and failed == len(results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
