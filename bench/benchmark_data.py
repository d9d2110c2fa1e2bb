"""Per-sample cost of the training data pipeline (DataLoader worker side) for both pixel formats.

    python bench/benchmark_data.py [CONFIG] [--samples 32] [--batch-size 16]

CONFIG defaults to bench/gpu/scaling_1b_cfg.py (512x512 CHASE_DB1 images, 5 masks each, one 448-px tile,
the 1024-px SAM2 input). Prints a table (see bench/harness/data_pipeline.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness.data_pipeline import format_table, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="bench/gpu/scaling_1b_cfg.py")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args(argv)
    from mmengine.config import Config

    cfg = Config.fromfile(a.config)
    rows = run(cfg.train_dataloader.dataset, samples=a.samples, batch_size=a.batch_size)
    cpu = platform.processor() or platform.machine()
    note = f"{a.config}, {a.samples} samples, batch {a.batch_size}, one thread, {cpu}, {os.cpu_count()} cores"
    print(format_table(rows, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
