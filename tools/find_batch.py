"""Find the largest micro-batch a device fits for a config, and the accumulation that keeps its global batch.

    python tools/find_batch.py projects/sa2va/configs/sa2va_1b_random.py --max-batch 64

Runs real training steps (forward, backward, optimiser step) of the config's model on the longest samples
of its training set, in a child process, doubling the batch until out of memory, then bisecting; see
:mod:`projects.sa2va.engine.batch_finder` for the safety margin. Prints the trials, writes
``<work_dir>/auto_batch.json`` and prints the ``--cfg-options`` to train with. ``tools/train.py --auto-batch``
does the same before training and applies the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POLICIES = ("exact", "largest")  # = projects.sa2va.engine.batch_finder.POLICIES (light --help)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="e.g. projects/sa2va/configs/sa2va_finetune.py, or a copy of it")
    p.add_argument("--max-batch", type=int, help="try no batch above this (needed on the CPU)")
    p.add_argument("--start", type=int, default=1, help="first batch tried (default 1)")
    p.add_argument(
        "--headroom", type=float, default=0.10, help="fraction of the device memory left free (default 0.10)"
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="exact",
        help="exact (default): only batches that divide batch_size x accumulative_counts, global batch kept; "
        "largest: any batch, the global batch may change",
    )
    p.add_argument("--no-bisect", action="store_true", help="stop after doubling (fewer trials)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the training will use (default 1)")
    p.add_argument("--work-dir", help="where auto_batch.json goes (default: the config's work_dir)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE", help="overrides")
    args = p.parse_args(argv)
    for name in ("max_batch", "start", "gpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 0.0 <= args.headroom < 1.0:
        p.error(f"--headroom must be in [0, 1), got {args.headroom}")
    return args


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from projects.sa2va.engine.batch_finder import REPORT_NAME, AutoBatchError, search_and_plan, write_report
    from projects.sa2va.engine.builder import load_config
    from projects.sa2va.engine.launch import apply_launch_options

    try:
        cfg = load_config(args.config, args.cfg_options)  # errors name the file
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"find_batch.py: {e}") from e
    apply_launch_options(cfg, work_dir=args.work_dir)
    try:
        report, plan = search_and_plan(
            cfg,
            max_batch=args.max_batch,
            start=args.start,
            headroom=args.headroom,
            policy=args.policy,
            bisect=not args.no_bisect,
            world_size=args.gpus,
        )
    except AutoBatchError as e:
        raise SystemExit(f"find_batch.py: {e}") from e
    path = write_report(report, Path(cfg.work_dir) / REPORT_NAME)

    print(f"\n{report['device']}, torch {report['torch_version']}, {args.gpus} GPU(s), policy {args.policy}")
    if report.get("budget_bytes") is not None:
        print(
            f"device {_gib(report['device_total_bytes'])} GiB, budget {_gib(report['budget_bytes'])} GiB "
            f"(headroom {args.headroom:.0%})"
        )
    print(f"{'batch':>6} {'result':>12} {'peak GiB':>9} {'reserve GiB':>12} {'seconds':>8}")
    for t in report["trials"]:
        print(
            f"{t['batch']:>6} {t['outcome']:>12} {_gib(t['peak_bytes']):>9} {_gib(t['reserve_bytes']):>12} "
            f"{t['seconds']:>8.1f}"
        )
    print(f"search: {report['reason']}; largest fit {report['largest_fit']}")
    print(
        f"use: batch_size {plan.batch_size} x accumulative_counts {plan.accumulative_counts} x {args.gpus} "
        f"GPU(s) = global batch {plan.global_batch} (the config's: {plan.config_global_batch})"
    )
    if plan.note:
        print(("note: " if plan.global_batch_kept else "WARNING: ") + plan.note)
    print(f"--cfg-options {' '.join(report['cfg_options'])}")
    print(f"written: {path}")
    return 0 if report["largest_fit"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
