"""All-reduce bandwidth between the GPUs of one host, at the size of Sa2VA's gradients (torchrun, NCCL).

torchrun --nproc-per-node 2 bench/gpu/allreduce_bench.py [--mib 64 512 1344] [--iters 20]

Prints one table row per size: time per fp32 all-reduce and the bus bandwidth (``2 (n-1)/n * bytes / s``,
NCCL's convention). 1344 MiB is one step's trainable gradients of the Sa2VA-1B recipe (352 M parameters:
LoRA r=128, fp32 embedding and head copies, mlp1, SAM2 mask decoder, text_hidden_fcs).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, nargs="+", default=[64, 512, 1344])
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if rank == 0:
        print("| fp32 MiB | GPUs | ms per all-reduce | bus GB/s |\n|---|---|---|---|")
    for mib in a.mib:
        x = torch.ones(mib * 2**20 // 4, device="cuda")
        for _ in range(3):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(a.iters):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / a.iters
        if rank == 0:
            bus = 2 * (world - 1) / world * x.numel() * 4 / dt / 1e9
            print(f"| {mib} | {world} | {dt * 1e3:.2f} | {bus:.0f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
