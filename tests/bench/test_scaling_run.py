"""bench/gpu/scaling_run.sh and its report: optimiser steps from micro-batch records, and the whole script
on CPU (tiny model, gloo) in its default mode, where 1 rank accumulates 2 micro-batches per step."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import scaling_report  # noqa: E402

from tests.procs import run_gpu_script  # noqa: E402
from tests.records import write_loss_records  # noqa: E402


def write_records(path: Path, losses: list[float], dt: float) -> None:
    times = [100.0 + i * dt for i in range(1, len(losses) + 1)]
    write_loss_records(path / "train_losses.jsonl", losses, times, data_time=[0.01] * len(losses))


def test_report_groups_micro_batches_into_optimiser_steps(tmp_path, capsys, monkeypatch):
    # 1 GPU: 2 micro-batches of 0.5 s per step; 2 GPUs: 1 micro-batch of 0.5 s per step -> 2x.
    write_records(tmp_path / "g1", [4.0, 2.0, 3.0, 1.0, 2.0, 2.0, 1.5, 0.5], dt=0.5)
    write_records(tmp_path / "g2", [3.0, 2.01, 2.0, 1.0], dt=0.5)
    steps = scaling_report.optimiser_steps(
        scaling_report.read_loss_records(tmp_path / "g1" / "train_losses.jsonl"), 2, "g1"
    )
    assert [s["loss"] for s in steps.values()] == [3.0, 2.0, 2.0, 1.0]
    assert steps[2]["time"] == 102.0 and steps[2]["data_time"] == pytest.approx(0.02)
    argv = ["x", str(tmp_path / "g1"), str(tmp_path / "g2"), "--global-batch", "8", "--accum-1", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--warmup", "1"])
    assert scaling_report.main() == 0
    out = capsys.readouterr().out
    assert "| 1 | 4 x 2 | 8 | 8.00 | 1.00 |" in out and "| 2 | 4 x 1 | 8 | 16.00 | 2.00 (ideal 2.00)" in out
    assert "max |loss 1 GPU - loss 2 GPUs| = 0.01000 at step 2" in out and "PASS" in out
    # A loss curve outside the tolerance fails.
    write_records(tmp_path / "g3", [3.0, 2.5, 2.0, 1.0], dt=0.5)
    monkeypatch.setattr(sys, "argv", [argv[0], argv[1], str(tmp_path / "g3"), *argv[3:], "--warmup", "1"])
    assert scaling_report.main() == 1
    with pytest.raises(ValueError, match="missing"):
        scaling_report.optimiser_steps({1: {}, 3: {}}, 1, "gap")


def write_rank_records(path: Path, durations: list[list[float]]) -> None:
    """Per-rank records whose iteration ``i + 2`` takes ``durations[rank][i]`` seconds."""
    for rank, durs in enumerate(durations):
        times = list(itertools.accumulate(durs, initial=100.0))
        n = len(times)
        write_loss_records(path / f"train_losses.rank{rank}.jsonl", [1.0] * n, times, data_time=[0.0] * n)


def test_step_timing_splits_sync_micro_batches_and_measures_the_rank_spread(tmp_path, capsys, monkeypatch):
    # 2 micro-batches per step; iterations 2, 4, 6 end a step (gradient sync), 3 and 5 do not.
    write_rank_records(tmp_path / "n", [[0.4, 0.5, 0.6, 0.4, 0.6], [0.4, 0.3, 0.8, 0.5, 0.5]])
    ranks = scaling_report.rank_records(tmp_path / "n")
    timing = scaling_report.step_timing(ranks, accum=2, warmup=1, source="n")
    assert timing["no_sync"] == pytest.approx([0.45, 0.4])
    assert timing["sync"] == pytest.approx([0.6, 0.65])
    assert timing["spread"] == pytest.approx((0.2 + 0.1) / 2)  # |0.5 - 0.3| in step 2, |0.4 - 0.5| in step 3
    one_file = scaling_report.rank_records(tmp_path / "n" / "train_losses.rank0.jsonl")
    one = scaling_report.step_timing(one_file, accum=2, warmup=1, source="n")
    assert one["spread"] is None and one["no_sync"] == pytest.approx([0.45])
    assert scaling_report.step_timing(ranks, accum=1, warmup=0, source="n")["no_sync"] == [None, None]
    with pytest.raises(ValueError, match="no micro-batches after the 5 warm-up steps"):
        scaling_report.step_timing(ranks, accum=2, warmup=5, source="n")
    # The report prints them under the loss comparison.
    write_rank_records(tmp_path / "one", [[0.2] * 11])
    argv = ["x", str(tmp_path / "one"), str(tmp_path / "n"), "--global-batch", "4", "--accum-1", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--accum-n", "2", "--warmup", "1"])
    assert scaling_report.main() == 0
    out = capsys.readouterr().out
    assert "| 2 GPUs | 1 | 0.400 | 0.650 |" in out and "| 1 GPU | 0 | 0.200 | 0.200 |" in out
    assert "differs by 0.150 s on average" in out


@pytest.mark.slow
def test_scaling_run_on_cpu_accumulation_mode(tmp_path):
    rc, out = run_gpu_script(
        "scaling_run.sh",
        CFG="tests/bench/configs/tiny_scaling.py",
        BATCH="2",
        STEPS="4",
        WARMUP="1",
        RUNS=str(tmp_path),
    )
    assert rc == 0, out[-4000:]
    assert "global batch = 2 per rank x 2 accumulation x 1 ranks = 4" in out
    assert "global batch = 2 per rank x 1 accumulation x 2 ranks = 4" in out
    assert "| 1 | 2 x 2 | 4 |" in out and "| 2 | 2 x 1 | 4 |" in out and "PASS" in out
    assert len(scaling_report.run_records(tmp_path / "gpu1")) == 8
    two = scaling_report.run_records(tmp_path / "gpu2")
    files = [tmp_path / "gpu2" / f"train_losses.rank{r}.jsonl" for r in (0, 1)]
    ranks = [scaling_report.read_loss_records(f) for f in files]
    assert len(two) == 4 and two[2]["loss"] == pytest.approx((ranks[0][2]["loss"] + ranks[1][2]["loss"]) / 2)
