"""``tools/compare_runs.py``: the metrics table of several ``report.json`` files, and a note for each
setting the runs differ in (another annotation file or query count: other work was scored)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from projects.sa2va.evaluation.compare import differences, format_table

ROOT = Path(__file__).resolve().parents[2]


def report(dice: float, **settings) -> dict:
    base = {
        "best_threshold": 0.3,
        "at_0.5": {"dice": dice, "iou": dice / 2, "cl_dice": None},
        "at_best": {"dice": dice + 0.1, "iou": dice / 2 + 0.1, "cl_dice": None},
        "ann_file": "data/x/val.json",
        "n_queries": 8,
        "threshold_chosen_on": "data/x/val.json",
        "tiling": None,
        "flip_tta": False,
    }
    return {**base, **settings}


def test_runs_on_the_same_work_have_no_notes():
    table = format_table({"a": report(0.5), "b": report(0.6)})
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["run", "dice@0.5"] and len(lines) == 4
    assert lines[2].split()[:2] == ["a", "0.5000"] and lines[3].split()[:2] == ["b", "0.6000"]
    assert differences({"a": report(0.5), "b": report(0.6)}) == []


def test_each_differing_setting_is_noted_with_every_runs_value(tmp_path):
    runs = {
        "a": report(0.5),
        "b": report(0.6, ann_file="data/x/test.json", n_queries=9),
        "c": report(0.7, flip_tta=True),
    }
    assert differences(runs) == [
        "note: the runs differ in ann_file: a='data/x/val.json', b='data/x/test.json', c='data/x/val.json'",
        "note: the runs differ in n_queries: a=8, b=9, c=8",
        "note: the runs differ in flip_tta: a=False, b=False, c=True",
    ]
    paths = {}
    for name, rep in runs.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rep))
    args = [a for name, p in paths.items() for a in ("--run", f"{name}={p}")]
    proc = subprocess.run(
        [sys.executable, "tools/compare_runs.py", *args, "--table", str(tmp_path / "t.txt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "note: the runs differ in n_queries: a=8, b=9, c=8" in proc.stdout
    assert (tmp_path / "t.txt").read_text() == proc.stdout
