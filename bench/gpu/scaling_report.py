"""Compare two runs of bench/gpu/scaling_run.sh (1 GPU vs N GPUs, same global batch): throughput and losses.

python bench/gpu/scaling_report.py WORK_DIR_1GPU WORK_DIR_NGPU --gpus 2 --global-batch 32 \
    [--accum-1 2 --accum-n 1] [--warmup 10]

Both runs' loss records (LossRecorderHook, one record per micro-batch iteration: ``train_losses.jsonl``
with losses averaged over ranks, or one ``train_losses.rank<r>.jsonl`` per rank, averaged here, times
from rank 0) are grouped into optimiser steps: ``--accum-1`` / ``--accum-n`` micro-batches
per step. A step's loss is the mean of its micro-batch losses (what the accumulated gradient is the
gradient of) and its end time that of its last micro-batch. Throughput counts the steps after
``--warmup`` steps: ``global_batch * steps / seconds``.

Where the step time goes (after the warm-up, from the per-rank records' end times): per rank, the median
micro-batch without a gradient sync and the median micro-batch that ends a step (backward with the
all-reduce, then the optimiser step); and, with several ranks and accumulation, how far apart the ranks'
no-sync work of one step is (mean over steps of slowest minus fastest rank): the faster rank waits about
that long in the step's all-reduce.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.engine.hooks import read_loss_records  # noqa: E402


def rank_records(work_dir: str | Path) -> list[dict[int, dict]]:
    """A run's records by rank: ``train_losses.jsonl`` (one entry), ``train_losses.rank<r>.jsonl`` by rank,
    or the one records file given as ``work_dir``."""
    work_dir = Path(work_dir)
    if work_dir.is_file():  # one records file (e.g. a copy kept in bench/records)
        return [read_loss_records(work_dir)]
    if (work_dir / "train_losses.jsonl").exists():
        return [read_loss_records(work_dir / "train_losses.jsonl")]
    ranks = sorted(work_dir.glob("train_losses.rank*.jsonl"), key=lambda f: int(f.stem.split("rank")[-1]))
    if not ranks:
        raise FileNotFoundError(f"{work_dir}: no train_losses.jsonl or train_losses.rank<r>.jsonl")
    return [read_loss_records(f) for f in ranks]


def mean_over_ranks(per_rank: list[dict[int, dict]], source: str | Path) -> dict[int, dict]:
    """Per-iteration records with the loss averaged over the ranks (other fields from rank 0)."""
    if len(per_rank) == 1:
        return per_rank[0]
    out = {}
    for it, rec in per_rank[0].items():
        if any(it not in r for r in per_rank):
            raise ValueError(f"{source}: iteration {it} is missing from a rank's records")
        out[it] = {**rec, "loss": sum(r[it]["loss"] for r in per_rank) / len(per_rank)}
    return out


def run_records(work_dir: str | Path) -> dict[int, dict]:
    """A run's per-iteration records, losses averaged over the ranks (see the module docstring).

    ``work_dir`` may also be one records file.
    """
    return mean_over_ranks(rank_records(work_dir), work_dir)


def optimiser_steps(records: dict[int, dict], accum: int, source: str) -> dict[int, dict]:
    """Micro-batch records -> ``{step: {"loss", "time", "data_time"}}`` (steps from 1, complete ones only)."""
    its = sorted(records)
    if its != list(range(1, len(its) + 1)):
        missing = sorted(set(range(1, its[-1] + 1)) - set(its)) if its else []
        raise ValueError(f"{source}: iterations are not 1..{len(its)} (missing {missing[:5]})")
    steps = {}
    for k in range(len(its) // accum):
        group = [records[its[k * accum + j]] for j in range(accum)]
        steps[k + 1] = {
            "loss": sum(r["loss"] for r in group) / accum,
            "time": group[-1]["time"],
            "data_time": sum(r.get("data_time", 0.0) for r in group),
        }
    return steps


def samples_per_s(steps: dict[int, dict], global_batch: int, warmup: int) -> float:
    its = sorted(steps)
    first, last = its[warmup - 1] if warmup > 0 else its[0], its[-1]
    return global_batch * (last - first) / (steps[last]["time"] - steps[first]["time"])


def mean_data_time(steps: dict[int, dict], warmup: int) -> float:
    late = [s["data_time"] for k, s in steps.items() if k > warmup]
    return sum(late) / max(len(late), 1)


def step_timing(per_rank: list[dict[int, dict]], accum: int, warmup: int, source: str | Path) -> dict:
    """Per-rank micro-batch durations of the steps after ``warmup`` (see the module docstring).

    ``per_rank``: :func:`rank_records` of a run. Returns ``{"no_sync": [median s per rank], "sync": [median s
    per rank], "spread": mean s or None}``; a micro-batch's duration is its end time minus the previous
    one's, so iteration 1 has none.
    """
    no_sync, sync, work = [], [], []
    for records in per_rank:
        ns, sy, per_step = [], [], {}
        for i in sorted(records):
            step = (i - 1) // accum  # 0-based optimiser step of iteration i
            if i - 1 not in records or step < warmup:
                continue
            dur = records[i]["time"] - records[i - 1]["time"]
            if i % accum:
                ns.append(dur)
                per_step[step] = per_step.get(step, 0.0) + dur
            else:
                sy.append(dur)
        if not sy:
            raise ValueError(f"{source}: no micro-batches after the {warmup} warm-up steps")
        no_sync.append(statistics.median(ns) if ns else None)
        sync.append(statistics.median(sy))
        work.append(per_step)
    spread = None
    steps = set.intersection(*(set(w) for w in work))
    if len(per_rank) > 1 and steps:
        spread = sum(max(w[k] for w in work) - min(w[k] for w in work) for k in steps) / len(steps)
    return {"no_sync": no_sync, "sync": sync, "spread": spread}


def print_step_timing(label: str, timing: dict) -> None:
    for r, (ns, sy) in enumerate(zip(timing["no_sync"], timing["sync"])):
        ns_s = "-" if ns is None else f"{ns:.3f}"
        print(f"| {label} | {r} | {ns_s} | {sy:.3f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("one_gpu")
    p.add_argument("n_gpu")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--accum-1", type=int, default=1, help="micro-batches per optimiser step on 1 GPU")
    p.add_argument("--accum-n", type=int, default=1, help="micro-batches per optimiser step on N GPUs")
    p.add_argument("--warmup", type=int, default=10, help="optimiser steps left out of the throughput")
    p.add_argument("--rel-tol", type=float, default=0.02, help="max |loss diff| / first loss to pass")
    a = p.parse_args()
    ranks_1, ranks_n = rank_records(a.one_gpu), rank_records(a.n_gpu)
    s1 = optimiser_steps(mean_over_ranks(ranks_1, a.one_gpu), a.accum_1, a.one_gpu)
    sn = optimiser_steps(mean_over_ranks(ranks_n, a.n_gpu), a.accum_n, a.n_gpu)
    common = sorted(set(s1) & set(sn))
    if len(common) < a.warmup + 2:
        print(f"too few common optimiser steps ({len(common)}) to compare", file=sys.stderr)
        return 1
    s1 = {k: s1[k] for k in common}
    sn = {k: sn[k] for k in common}
    t1 = samples_per_s(s1, a.global_batch, a.warmup)
    tn = samples_per_s(sn, a.global_batch, a.warmup)
    b1, bn = a.global_batch // a.accum_1, a.global_batch // (a.accum_n * a.gpus)
    diffs = [abs(s1[i]["loss"] - sn[i]["loss"]) for i in common]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    tol = a.rel_tol * abs(s1[common[0]]["loss"])
    ok = diffs[worst] <= tol
    print(
        f"| GPUs | batch per GPU x accumulation | global batch | samples/s (steps {a.warmup}..{common[-1]}) "
        "| scaling | data wait s/step |"
    )
    print("|---|---|---|---|---|---|")
    wait1, waitn = mean_data_time(s1, a.warmup), mean_data_time(sn, a.warmup)
    print(f"| 1 | {b1} x {a.accum_1} | {a.global_batch} | {t1:.2f} | 1.00 | {wait1:.3f} |")
    print(
        f"| {a.gpus} | {bn} x {a.accum_n} | {a.global_batch} | {tn:.2f} | {tn / t1:.2f} (ideal {a.gpus}.00) "
        f"| {waitn:.3f} |"
    )
    print()
    print(
        f"loss over {len(common)} optimiser steps: first {s1[common[0]]['loss']:.4f} (1 GPU) / "
        f"{sn[common[0]]['loss']:.4f} ({a.gpus} GPUs), last {s1[common[-1]]['loss']:.4f} / "
        f"{sn[common[-1]]['loss']:.4f}"
    )
    print(
        f"max |loss 1 GPU - loss {a.gpus} GPUs| = {diffs[worst]:.5f} at step {common[worst]}, mean "
        f"{sum(diffs) / len(diffs):.5f}; tolerance {tol:.4f} ({a.rel_tol:.0%} of the first loss): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    print()
    print("| run | rank | micro-batch without sync (median s) | micro-batch ending a step (median s) |")
    print("|---|---|---|---|")
    print_step_timing("1 GPU", step_timing(ranks_1, a.accum_1, a.warmup, a.one_gpu))
    timing_n = step_timing(ranks_n, a.accum_n, a.warmup, a.n_gpu)
    print_step_timing(f"{a.gpus} GPUs", timing_n)
    if timing_n["spread"] is not None:
        print(
            f"\n{a.gpus} GPUs: the ranks' no-sync work per step differs by {timing_n['spread']:.3f} s on "
            "average (slowest - fastest rank): about what the faster rank waits in each step's all-reduce"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
