"""Compare two runs of tools/gpu/scaling_run.sh (1 GPU vs N GPUs, same global batch): throughput and losses.

python tools/gpu/scaling_report.py WORK_DIR_1GPU WORK_DIR_NGPU --gpus 2 --global-batch 4 [--warmup 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.engine.hooks import read_loss_records  # noqa: E402


def samples_per_s(records: dict[int, dict], global_batch: int, warmup: int) -> float:
    its = sorted(records)
    first, last = its[warmup - 1] if warmup > 0 else its[0], its[-1]
    dt = records[last]["time"] - records[first]["time"]
    return global_batch * (last - first) / dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("one_gpu")
    p.add_argument("n_gpu")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--warmup", type=int, default=10, help="iterations left out of the throughput")
    p.add_argument("--rel-tol", type=float, default=0.02, help="max |loss diff| / first loss to pass")
    a = p.parse_args()
    r1 = read_loss_records(Path(a.one_gpu) / "train_losses.jsonl")
    rn = read_loss_records(Path(a.n_gpu) / "train_losses.jsonl")
    common = sorted(set(r1) & set(rn))
    if len(common) < a.warmup + 2:
        print(f"too few common iterations ({len(common)}) to compare", file=sys.stderr)
        return 1
    s1 = samples_per_s(r1, a.global_batch, a.warmup)
    sn = samples_per_s(rn, a.global_batch, a.warmup)
    diffs = [abs(r1[i]["loss"] - rn[i]["loss"]) for i in common]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    tol = a.rel_tol * abs(r1[common[0]]["loss"])
    ok = diffs[worst] <= tol
    print(f"| GPUs | global batch | samples/s (iters {a.warmup}..{common[-1]}) | scaling |")
    print("|---|---|---|---|")
    print(f"| 1 | {a.global_batch} | {s1:.2f} | 1.00 |")
    print(f"| {a.gpus} | {a.global_batch} | {sn:.2f} | {sn / s1:.2f} (ideal {a.gpus}.00) |")
    print()
    print(
        f"loss over {len(common)} iterations: first {r1[common[0]]['loss']:.4f} (1 GPU) / "
        f"{rn[common[0]]['loss']:.4f} ({a.gpus} GPUs), last {r1[common[-1]]['loss']:.4f} / "
        f"{rn[common[-1]]['loss']:.4f}"
    )
    print(
        f"max |loss 1 GPU - loss {a.gpus} GPUs| = {diffs[worst]:.5f} at iteration {common[worst]}, mean "
        f"{sum(diffs) / len(diffs):.5f}; tolerance {tol:.4f} ({a.rel_tol:.0%} of the first loss): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
