"""Table of a multi-seed learning run: per seed and mean +- spread, whole image and inside the field of view.

Reads the ``report.json`` that ``tools/test.py`` writes for each seed (``--fov-masks`` adds its ``fov``
section) and prints one row per seed plus the mean and the sample standard deviation over seeds, at the
threshold chosen on the validation set (``at_best``) and at 0.5.

    python bench/gpu/seeds_report.py --run 0=W/seed0/eval/report.json:12 --run 1=... [--json OUT.json]

``--run NAME=REPORT[:ITERATIONS]``: the iteration count is optional and only printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = (
    ("dice@thr", ("at_best", "dice")),
    ("clDice@thr", ("at_best", "cl_dice")),
    ("thr", None),  # where the chosen threshold lives differs per scope: THRESHOLD_KEY
    ("dice@0.5", ("at_0.5", "dice")),
)
THRESHOLD_KEY = {"whole": ("best_threshold",), "fov": ("threshold",)}


def _get(report: dict, path: tuple[str, ...], where: str) -> float:
    node = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"{where}: no {'.'.join(path)} in the report")
        node = node[key]
    return float(node)


def read_rows(runs: list[tuple[str, Path, int | None]]) -> list[dict]:
    """One row per run: ``name``, ``iterations`` and, per scope (``whole``, ``fov``), the columns' values."""
    rows = []
    for name, path, iters in runs:
        report = json.loads(path.read_text())
        if "fov" not in report:
            raise KeyError(f"{path}: no 'fov' section (run tools/test.py with --fov-masks)")
        row = {"name": name, "iterations": iters}
        for scope, rep in (("whole", report), ("fov", report["fov"])):
            row[scope] = {
                col: _get(rep, key or THRESHOLD_KEY[scope], f"{path} [{scope}]") for col, key in COLUMNS
            }
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean and sample standard deviation (0 for one run) of every column, per scope."""
    out = {}
    for scope in ("whole", "fov"):
        out[scope] = {}
        for col, _ in COLUMNS:
            vals = [r[scope][col] for r in rows]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[scope][col] = {"mean": statistics.fmean(vals), "std": std, "min": min(vals), "max": max(vals)}
    return out


def format_table(rows: list[dict], summary: dict) -> str:
    """Plain-text table: one line per seed, then ``mean`` and ``std`` lines."""
    head = f"{'seed':>6} {'iters':>6}" + "".join(
        f" {scope + ' ' + col:>17}" for scope in ("fov", "whole") for col, _ in COLUMNS
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        it = "" if r["iterations"] is None else str(r["iterations"])
        lines.append(
            f"{r['name']:>6} {it:>6}"
            + "".join(f" {r[scope][col]:>17.4f}" for scope in ("fov", "whole") for col, _ in COLUMNS)
        )
    for stat in ("mean", "std"):
        lines.append(
            f"{stat:>6} {'':>6}"
            + "".join(
                f" {summary[scope][col][stat]:>17.4f}" for scope in ("fov", "whole") for col, _ in COLUMNS
            )
        )
    return "\n".join(lines)


def parse_run(spec: str) -> tuple[str, Path, int | None]:
    """``NAME=REPORT[:ITERATIONS]`` -> (name, path, iterations)."""
    if "=" not in spec:
        raise argparse.ArgumentTypeError(f"--run {spec!r}: expected NAME=REPORT[:ITERATIONS]")
    name, rest = spec.split("=", 1)
    iters = None
    if ":" in rest:
        rest, it = rest.rsplit(":", 1)
        if not it.isdigit():
            raise argparse.ArgumentTypeError(f"--run {spec!r}: iterations {it!r} is not an integer")
        iters = int(it)
    return name, Path(rest), iters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=parse_run, action="append", required=True, help="NAME=REPORT[:ITERATIONS]"
    )
    parser.add_argument("--json", type=Path, help="also write rows and summary as JSON here")
    args = parser.parse_args(argv)
    rows = read_rows(args.run)
    summary = summarise(rows)
    print(format_table(rows, summary))
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
