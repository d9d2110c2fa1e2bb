"""Where a DDP gradient sync spends its time: the NCCL all-reduce kernels of ``ProfileItersHook`` traces.

python bench/gpu/profile_allreduce.py WORK_DIR [--keep DIR]

Reads ``profile.rank<r>.json`` (or ``.json.gz``, or the ``.nccl.json`` subsets ``--keep`` writes) of every
rank in WORK_DIR (``bench/gpu/scaling_1b_profile_cfg.py`` writes them) and prints, per rank and per profiled
iteration (from one ``DistributedDataParallel.forward`` to the next): the forward's host time, the number
of gradient buckets reduced, their total and longest kernel time, and the other all-reduces (scalars such
as the logged losses; DDP's ``Int`` map of unused parameters).

An NCCL kernel starts when its rank gets there and ends when every rank has contributed, so on the rank
that reaches the sync first the bucket kernels are mostly waiting for the slower rank; on the last rank
to arrive they show the transfer itself.

``--keep DIR`` writes ``DIR/profile.rank<r>.nccl.json``: just the events read here, in the same Chrome
trace format (a few kB instead of the full trace's tens of MB), so a reported table can be rerun from them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

FORWARD = "DistributedDataParallel.forward"
TRACE_NAME = re.compile(r"^profile\.rank(\d+)\.(json|json\.gz|nccl\.json)$")
SCALAR_MAX_ELEMS = 16  # all-reduces this small are logged scalars, not gradient buckets


def trace_files(work_dir: Path) -> dict[int, Path]:
    """``{rank: trace file}``, preferring the full trace over a ``.nccl.json`` subset."""
    found: dict[int, Path] = {}
    for f in sorted(work_dir.iterdir()):
        m = TRACE_NAME.match(f.name)
        if m and (int(m.group(1)) not in found or m.group(2) != "nccl.json"):
            found[int(m.group(1))] = f
    if not found:
        raise FileNotFoundError(f"{work_dir}: no profile.rank<r>.json[.gz] (ProfileItersHook writes them)")
    return dict(sorted(found.items()))


def read_events(path: Path) -> list[dict]:
    """The trace's all-reduce kernels and DDP forward annotations (complete ``"ph": "X"`` events)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a Chrome trace JSON ({e})") from None
    events = trace.get("traceEvents") if isinstance(trace, dict) else None
    if not isinstance(events, list):
        raise ValueError(f"{path}: no 'traceEvents' list")
    keep = []
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        is_forward = e.get("name") == FORWARD and e.get("cat") == "user_annotation"
        is_allreduce = e.get("cat") == "kernel" and "AllReduce" in str(e.get("name", ""))
        if is_forward or is_allreduce:
            try:
                keep.append({**e, "ts": float(e["ts"]), "dur": float(e["dur"])})
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: event {e.get('name')!r} without a numeric ts/dur") from None
    if not any(e["name"] == FORWARD for e in keep):
        raise ValueError(f"{path}: no {FORWARD!r} annotation (was the model wrapped in DDP?)")
    return keep


def kind(kernel: dict) -> str:
    args = kernel.get("args", {})
    if str(args.get("dtype", "")).lower().startswith("int"):
        return "other"
    try:
        elems = int(args.get("In msg nelems", SCALAR_MAX_ELEMS + 1))
    except (TypeError, ValueError):
        elems = SCALAR_MAX_ELEMS + 1
    return "other" if elems <= SCALAR_MAX_ELEMS else "bucket"


def per_iteration(events: list[dict]) -> list[dict]:
    """One row per profiled forward: the all-reduce kernels that start before the next forward."""
    forwards = sorted((e for e in events if e["name"] == FORWARD), key=lambda e: e["ts"])
    kernels = sorted((e for e in events if e["name"] != FORWARD), key=lambda e: e["ts"])
    rows = []
    for k, fwd in enumerate(forwards):
        end = forwards[k + 1]["ts"] if k + 1 < len(forwards) else float("inf")
        mine = [(kind(e), e["dur"] / 1000) for e in kernels if fwd["ts"] <= e["ts"] < end]
        buckets = [ms for k, ms in mine if k == "bucket"]
        rows.append(
            {
                "forward_ms": fwd["dur"] / 1000,
                "buckets": len(buckets),
                "bucket_ms": sum(buckets),
                "longest_ms": max(buckets, default=0.0),
                "other_ms": sum(ms for k, ms in mine if k == "other"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work_dir", type=Path)
    p.add_argument("--keep", type=Path, help="write the events read to DIR/profile.rank<r>.nccl.json")
    a = p.parse_args(argv)
    if not a.work_dir.is_dir():
        print(f"profile_allreduce: {a.work_dir}: not a directory", file=sys.stderr)
        return 2
    try:
        traces = {rank: read_events(path) for rank, path in trace_files(a.work_dir).items()}
    except (FileNotFoundError, ValueError) as e:
        print(f"profile_allreduce: {e}", file=sys.stderr)
        return 2
    print(
        "| rank | iteration | forward (host ms) | gradient buckets | bucket kernels ms | longest bucket ms "
        "| other all-reduces ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for rank, events in traces.items():
        for it, row in enumerate(per_iteration(events), 1):
            print(
                f"| {rank} | {it} | {row['forward_ms']:.1f} | {row['buckets']} | {row['bucket_ms']:.2f} "
                f"| {row['longest_ms']:.2f} | {row['other_ms']:.2f} |"
            )
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            out = a.keep / f"profile.rank{rank}.nccl.json"
            out.write_text(json.dumps({"traceEvents": events}, indent=0) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
