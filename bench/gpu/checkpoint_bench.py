"""Time and memory of writing, loading and exporting a Sa2VA-4B-shaped official HF folder (random bf16).

PYTHONPATH=/tmp/site:$PWD python3 bench/gpu/checkpoint_bench.py --preset 4b --device cuda --workdir /tmp/ckb
python bench/gpu/checkpoint_bench.py --preset tiny --device cpu --workdir /tmp/ckb   # smoke test
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness.checkpoint_io import PRESETS, format_table, run_checkpoint_bench  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="4b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", default=None, help="default: a temporary directory, removed at the end")
    args = p.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sa2va_ckb_"))
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty")
    try:
        rows = run_checkpoint_bench(args.preset, workdir, args.device)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"checkpoint bench, preset {args.preset}, device {args.device}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
