"""Train a Sa2VA config (one process, or one rank under ``torchrun``: ``bash tools/dist.sh train CONFIG N``).

The run itself is :func:`projects.sa2va.engine.launch.train`; this file only reads the command line.
The exit status is non-zero whenever training fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


LAUNCHERS = ("none", "pytorch", "slurm", "mpi")  # = projects.sa2va.engine.launch.LAUNCHERS (light --help)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="e.g. projects/sa2va/configs/sa2va_finetune.py, or a copy of it")
    p.add_argument("--work-dir", help="logs and checkpoints (default: the config's work_dir)")
    p.add_argument("--resume", metavar="auto|PATH", help="auto: newest intact checkpoint of the work dir")
    p.add_argument("--deepspeed", metavar="NAME|JSON", help="zero1, zero2, zero3 or a DeepSpeed JSON file")
    p.add_argument("--seed", type=int, help="replaces the config's randomness.seed")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE", help="overrides")
    p.add_argument("--launcher", choices=LAUNCHERS, default="none", help="pytorch: one rank under torchrun")
    p.add_argument(
        "--auto-batch",
        action="store_true",
        help="before training, find the largest batch_size this device fits (as tools/find_batch.py) and set "
        "batch_size / accumulative_counts, keeping the global batch (recorded in <work_dir>/auto_batch.json)",
    )
    p.add_argument(
        "--max-batch", type=int, help="with --auto-batch: try no batch above this (needed on the CPU)"
    )
    p.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)  # old torch launcher
    args = p.parse_args(argv)
    if args.max_batch is not None and not args.auto_batch:
        p.error("--max-batch needs --auto-batch")
    if args.max_batch is not None and args.max_batch < 1:
        p.error(f"--max-batch must be >= 1, got {args.max_batch}")
    return args


@record
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from projects.sa2va.engine.batch_finder import AutoBatchError
    from projects.sa2va.engine.builder import load_config
    from projects.sa2va.engine.deepspeed_config import DeepSpeedConfigError
    from projects.sa2va.engine.launch import train

    try:
        cfg = load_config(args.config, args.cfg_options)  # errors name the file
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"train.py: {e}") from e
    auto_batch = dict(max_batch=args.max_batch) if args.auto_batch else None
    try:
        train(
            cfg,
            args.work_dir,
            args.resume,
            args.deepspeed,
            args.launcher,
            seed=args.seed,
            auto_batch=auto_batch,
        )
    except (DeepSpeedConfigError, AutoBatchError) as e:
        raise SystemExit(f"train.py: {e}") from e


if __name__ == "__main__":
    main()
