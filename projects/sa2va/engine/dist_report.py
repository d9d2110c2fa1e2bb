"""Summarise which torchrun worker failed first and why, from the agent's per-rank ``error.json`` files.

torchrun (``--log-dir DIR``) keeps ``DIR/<run id>/attempt_<k>/<local rank>/error.json`` for every worker
that died with a recorded exception (``tools/train.py`` is wrapped in torch's ``@record``). torchrun's
own report is long and lists secondary failures (peers that lost their connection) first; this prints
one line per failed rank, the first failure marked, and the exception message in full.

    python -m projects.sa2va.engine.dist_report DIR [--node-rank N --nproc-per-node P]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def collect_failures(log_dir: str | Path, node_rank: int = 0, nproc_per_node: int = 1) -> list[dict]:
    """Failures found under ``log_dir``, earliest first: ``{rank, local_rank, timestamp, message, file}``."""
    out = []
    for path in sorted(Path(log_dir).glob("*/attempt_*/*/error.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            out.append(
                {
                    "rank": None,
                    "local_rank": None,
                    "timestamp": 0,
                    "message": f"unreadable: {e}",
                    "file": str(path),
                }
            )
            continue
        msg = data.get("message", {})
        if isinstance(msg, dict):
            text = msg.get("message", "")
            ts = int(msg.get("extraInfo", {}).get("timestamp", 0) or 0)
        else:
            text, ts = str(msg), 0
        local = int(path.parent.name) if path.parent.name.isdigit() else None
        rank = None if local is None else node_rank * nproc_per_node + local
        out.append({"rank": rank, "local_rank": local, "timestamp": ts, "message": text, "file": str(path)})
    return sorted(out, key=lambda f: (f["timestamp"], f["rank"] if f["rank"] is not None else -1))


def format_failures(failures: list[dict]) -> str:
    if not failures:
        return "dist.sh: a worker failed without an error file (killed by a signal, or out of host memory?)"
    lines = ["dist.sh: training failed:"]
    for i, f in enumerate(failures):
        tag = "FIRST FAILURE" if i == 0 else "also failed"
        lines.append(f"  rank {f['rank']} (local rank {f['local_rank']}) [{tag}]: {f['message']}")
    lines.append(f"  (full tracebacks: {failures[0]['file']} and torchrun's report above)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log_dir")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--nproc-per-node", type=int, default=1)
    a = p.parse_args(argv)
    sys.stderr.write(format_failures(collect_failures(a.log_dir, a.node_rank, a.nproc_per_node)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
