"""Cost of DDP's ``find_unused_parameters=True`` graph search on a config's training graph.

python bench/gpu/ddp_search_cost.py CONFIG [--device cpu|cuda] [--repeats 5]

Builds the config's model (on ``--device``, fp32 on the CPU), wraps it in a 1-rank DDP (gloo on the CPU,
NCCL on CUDA) with ``find_unused_parameters=True``, runs one training forward on the first sample of the
config's dataset, and prints the number of autograd nodes and the time of
``reducer.prepare_for_backward`` (the search DDP runs after every synchronising forward). The number of
nodes does not depend on the batch size, so one sample gives the graph of a full batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def count_autograd_nodes(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        stack.extend(n for n, _ in f.next_functions)
    return len(seen)


def main(argv: list[str] | None = None) -> int:
    from mmengine.config import Config
    from torch.nn.parallel import DistributedDataParallel
    from xtuner.registry import BUILDER

    from projects.sa2va.datasets.collate import sa2va_collate
    from projects.sa2va.engine.builder import construct_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29677")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=0, world_size=1)
    cfg = Config.fromfile(args.config)
    cfg.model.init_device = args.device
    if args.device == "cpu":  # bf16 matmuls are slow on the host
        for part in ("mllm", "grounding_encoder"):
            if "torch_dtype" in cfg.model.get(part, {}):
                cfg.model[part].torch_dtype = "float32"
    torch.manual_seed(0)
    model = construct_model(cfg.model).to(args.device).train()
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    batch = model.data_preprocessor(sa2va_collate([dataset[0]], digests=False), True)
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    with ddp.no_sync():  # the forward without the search; timed separately below
        t = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            loss = sum(ddp(**batch, mode="loss").values())
        forward = time.perf_counter() - t
    nodes = count_autograd_nodes(loss)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ddp.reducer.prepare_for_backward([loss])
        times.append(time.perf_counter() - t)
    times.sort()
    fastest, median = times[0] * 1e3, times[len(times) // 2] * 1e3
    search = f"graph search ms (min / median of {args.repeats})"
    print(f"| config | device | autograd nodes | {search} | forward s |")
    print("|---|---|---|---|---|")
    print(f"| {args.config} | {args.device} | {nodes} | {fastest:.2f} / {median:.2f} | {forward:.1f} |")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
