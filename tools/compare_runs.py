"""Print a side-by-side metrics table of evaluated runs and plot their training curves in one figure.

    python tools/compare_runs.py --run low=WD/low/eval/report.json:WD/low/<ts>/vis_data/scalars.json \
        --run full=... [--table OUT/summary.txt] [--curves OUT/curves.png]

See projects/sa2va/evaluation/compare.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.evaluation.compare import format_table, load_reports, plot_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=REPORT_JSON[:SCALARS_JSON]")
    parser.add_argument("--table", type=Path, help="also write the table to this file")
    parser.add_argument("--curves", type=Path, help="PNG of all runs' training curves (needs SCALARS_JSON)")
    args = parser.parse_args(argv)
    reports, scalars = {}, {}
    for spec in args.run:
        name, sep, paths = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"compare_runs.py: --run wants NAME=REPORT[:SCALARS], got {spec!r}")
        report, _, scalar = paths.partition(":")
        reports[name] = report
        if scalar:
            scalars[name] = scalar
    table = format_table(load_reports(reports))
    sys.stdout.write(table + "\n")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table + "\n")
    if args.curves and scalars:
        plot_runs(scalars, args.curves)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
