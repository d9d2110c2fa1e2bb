"""Compare data-parallel runs of one config at the same global batch: DDP and DeepSpeed ZeRO stages.

python bench/gpu/deepspeed_report.py BASELINE NAME=WORK_DIR [NAME=WORK_DIR ...] --global-batch 64 \
    [--accum 2] [--warmup 10] [--rel-tol 0.02]

BASELINE and each WORK_DIR hold LossRecorderHook records (``train_losses.rank<r>.jsonl`` per rank or one
``train_losses.jsonl``; see bench/gpu/scaling_report.py); BASELINE may be ``NAME=PATH`` too. Every run
uses ``--accum`` micro-batches per optimiser step. Prints one row per run: samples/s after ``--warmup``
steps, the largest |loss difference| to the baseline over their common optimiser steps (pass: below
``--rel-tol`` times the baseline's first loss), the last step's loss and the peak CUDA memory of rank 0.
Exit status 1 when a run is outside the tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling_report import optimiser_steps, run_records, samples_per_s


def named(arg: str) -> tuple[str, str]:
    name, sep, path = arg.partition("=")
    return (name, path) if sep else (Path(arg).name, arg)


def peak_memory_mib(records: dict[int, dict]) -> int | None:
    """Largest ``max_memory_mib`` of a run's records (rank 0's, as ``run_records`` keeps them), or None."""
    mem = [r["max_memory_mib"] for r in records.values() if "max_memory_mib" in r]
    return max(mem) if mem else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("baseline")
    p.add_argument("runs", nargs="+", help="NAME=WORK_DIR")
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimiser step (all runs)")
    p.add_argument("--warmup", type=int, default=10, help="optimiser steps left out of the throughput")
    p.add_argument("--rel-tol", type=float, default=0.02, help="max |loss diff| / first baseline loss")
    args = p.parse_args(argv)
    base_name, base_path = named(args.baseline)
    base_records = run_records(base_path)
    base = optimiser_steps(base_records, args.accum, base_path)
    first = base[1]["loss"]
    tol = args.rel_tol * first
    rows = [(base_name, base, peak_memory_mib(base_records))]
    failed = []
    for arg in args.runs:
        name, path = named(arg)
        try:
            records = run_records(path)
            steps = optimiser_steps(records, args.accum, path)
            if not steps:
                raise ValueError("no complete optimiser step recorded")
            rows.append((name, steps, peak_memory_mib(records)))
        except (OSError, ValueError) as e:  # a run that failed: report it, keep the others
            print(f"{name}: no usable records: {e}")
            failed.append(name)
    print(f"baseline {base_name}: {base_path}; tolerance {tol:.3f} = {args.rel_tol} x first loss {first:.3f}")
    print(
        f"| run | optimiser steps | samples/s (steps {args.warmup}..) | max abs loss diff to {base_name} | "
        "last loss | peak memory MiB (rank 0) |"
    )
    print("|---|---|---|---|---|---|")
    for name, steps, mem in rows:
        common = sorted(set(steps) & set(base))
        diff = max(abs(steps[k]["loss"] - base[k]["loss"]) for k in common)
        speed = (
            samples_per_s(steps, args.global_batch, args.warmup) if len(steps) > args.warmup else float("nan")
        )
        verdict = "" if name == base_name else (" (ok)" if diff <= tol else " (OUT OF TOLERANCE)")
        if diff > tol:
            failed.append(name)
        last = steps[max(steps)]["loss"]
        print(
            f"| {name} | {len(steps)} | {speed:.2f} | {diff:.4f}{verdict} | {last:.4f} | "
            f"{mem if mem is not None else 'n/a'} |"
        )
    if failed:
        print(f"outside the tolerance: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
