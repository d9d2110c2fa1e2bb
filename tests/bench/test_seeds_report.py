"""bench/gpu/seeds_report.py: per-seed rows, mean and sample spread, named errors for incomplete reports."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "gpu"))
import seeds_report


def _report(dice: float, fov_dice: float) -> dict:
    """The keys of tools/test.py's report.json that the table reads (at_best, at_0.5, fov)."""

    def block(d: float) -> dict:
        return {
            "at_0.5": {"dice": d - 0.01, "cl_dice": d - 0.02},
            "at_best": {"dice": d, "cl_dice": d + 0.01},
        }

    fov = {"source": "auto", "threshold": 0.4, **block(fov_dice)}
    return {"best_threshold": 0.45, **block(dice), "fov": fov}


def test_rows_mean_and_spread(tmp_path, capsys):
    paths = []
    for seed, (d, f) in enumerate([(0.70, 0.72), (0.74, 0.76), (0.78, 0.80)]):
        p = tmp_path / f"r{seed}.json"
        p.write_text(json.dumps(_report(d, f)))
        paths.append(f"{seed}={p}:{100 + seed}")
    out_json = tmp_path / "seeds.json"
    seeds_report.main([a for p in paths for a in ("--run", p)] + ["--json", str(out_json)])
    table = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    fov = data["summary"]["fov"]["dice@thr"]
    assert fov["mean"] == pytest.approx(0.76)
    assert fov["std"] == pytest.approx(statistics.stdev([0.72, 0.76, 0.80]))
    assert (fov["min"], fov["max"]) == (pytest.approx(0.72), pytest.approx(0.80))
    assert data["summary"]["whole"]["dice@0.5"]["mean"] == pytest.approx(0.73)
    assert data["summary"]["whole"]["thr"]["mean"] == pytest.approx(0.45)
    assert data["summary"]["fov"]["thr"]["mean"] == pytest.approx(0.4)
    assert [r["iterations"] for r in data["runs"]] == [100, 101, 102]
    assert "0.7600" in table and table.strip().count("\n") == 6  # header, rule, 3 seeds, mean, std


def test_report_without_fov_section_is_named(tmp_path):
    p = tmp_path / "r.json"
    rep = _report(0.7, 0.7)
    del rep["fov"]
    p.write_text(json.dumps(rep))
    with pytest.raises(KeyError, match=r"r\.json.*--fov-masks"):
        seeds_report.read_rows([("0", p, None)])
    rep = _report(0.7, 0.7)
    del rep["fov"]["at_best"]["cl_dice"]
    p.write_text(json.dumps(rep))
    with pytest.raises(KeyError, match=r"\[fov\].*at_best\.cl_dice"):
        seeds_report.read_rows([("0", p, None)])


def test_bad_run_spec_is_refused():
    with pytest.raises(Exception, match="NAME=REPORT"):
        seeds_report.parse_run("report.json")
    with pytest.raises(Exception, match="not an integer"):
        seeds_report.parse_run("0=r.json:abc")
    assert seeds_report.parse_run("a=x/r.json:12") == ("a", Path("x/r.json"), 12)
