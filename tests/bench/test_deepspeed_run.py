"""bench/gpu/deepspeed_run.sh and its report on CPU: DDP, then DeepSpeed (ZeRO stage 0: gloo cannot run the
ZeRO-2/3 partition all-gather) with xtuner-style precision sections that would cast the whole model to
bf16. The same config must give the same initial weights and the same losses under both, and both runs'
trainable weights must load strictly into the config's model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import deepspeed_report  # noqa: E402
from scaling_report import read_loss_records  # noqa: E402

from tests.procs import run_gpu_script  # noqa: E402
from tests.records import write_loss_records  # noqa: E402


def write_records(path: Path, losses: list[float], dt: float, memory: int | None = None) -> None:
    times = [100.0 + i * dt for i in range(1, len(losses) + 1)]
    extra = {} if memory is None else {"max_memory_mib": [memory + i for i in range(1, len(losses) + 1)]}
    write_loss_records(path / "train_losses.rank0.jsonl", losses, times, **extra)


def test_report_rows_tolerance_and_a_failed_run(tmp_path, capsys):
    write_records(tmp_path / "ddp", [4.0, 2.0, 3.0, 1.0, 2.0, 2.0], dt=0.5, memory=1000)
    write_records(tmp_path / "z2", [4.0, 2.02, 3.0, 1.0, 2.0, 2.0], dt=1.0)
    (tmp_path / "z3").mkdir()  # failed before its first iteration: no records
    runs = [f"ddp={tmp_path / 'ddp'}", f"zero2={tmp_path / 'z2'}", f"zero3={tmp_path / 'z3'}"]
    code = deepspeed_report.main([*runs, "--global-batch", "8", "--accum", "2", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "tolerance 0.060 = 0.02 x first loss 3.000" in out
    assert "| ddp | 3 | 8.00 | 0.0000 | 2.0000 | 1006 |" in out  # 8 samples per 1 s step
    assert "| zero2 | 3 | 4.00 | 0.0100 (ok) | 2.0000 | n/a |" in out
    assert "zero3: no usable records" in out and code == 1
    write_records(tmp_path / "far", [5.0, 5.0, 3.0, 1.0], dt=0.5)
    far = [runs[0], f"far={tmp_path / 'far'}", "--global-batch", "8", "--accum", "2"]
    assert deepspeed_report.main(far) == 1
    assert "(OUT OF TOLERANCE)" in capsys.readouterr().out


@pytest.mark.slow
def test_deepspeed_run_on_cpu_matches_ddp(tmp_path):
    rc, out = run_gpu_script(
        "deepspeed_run.sh",
        CFG="tests/bench/configs/tiny_scaling.py",
        STAGES="tests/bench/configs/ds_cpu_zero0_xtuner_precision.json",
        BATCH="2",
        ACCUM="2",
        STEPS="2",
        WARMUP="1",
        RUNS=str(tmp_path),
    )
    assert rc == 0, out[-4000:]
    assert '"bf16": {"enabled": true} (whole model cast to bf16) switched off' in out
    assert "| ds_cpu_zero0_xtuner_precision | 2 |" in out and "(ok)" in out
    ddp = read_loss_records(tmp_path / "ddp" / "train_losses.rank0.jsonl")
    ds = read_loss_records(tmp_path / "ds_cpu_zero0_xtuner_precision" / "train_losses.rank0.jsonl")
    assert sorted(ddp) == sorted(ds) == [1, 2, 3, 4]
    assert ddp[1]["loss"] == ds[1]["loss"], "same initial weights and data under DDP and DeepSpeed"
    for i in ddp:
        assert abs(ddp[i]["loss"] - ds[i]["loss"]) < 1e-4, (i, ddp[i]["loss"], ds[i]["loss"])
    assert out.count("loaded strictly") == 2
