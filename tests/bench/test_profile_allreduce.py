"""bench/gpu/profile_allreduce.py on Chrome traces in torch.profiler's format (the event fields it writes for
NCCL kernels and ``record_function`` annotations): per-iteration all-reduce kernel time, the ``.gz`` and
``--keep`` subset files, and clear errors for traces it cannot use."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))
import profile_allreduce  # noqa: E402

KERNEL = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


def forward(ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "user_annotation", "name": profile_allreduce.FORWARD, "ts": ts, "dur": dur}


def allreduce(ts: float, dur: float, elems: int, dtype: str = "Float") -> dict:
    args = {"In msg nelems": elems, "Out msg nelems": elems, "Group size": 2, "dtype": dtype}
    return {"ph": "X", "cat": "kernel", "name": KERNEL, "ts": ts, "dur": dur, "args": args}


def trace(waits_ms: tuple[float, float]) -> dict:
    """Two iterations, the second ending in a gradient sync: two buckets, a logged scalar, DDP's Int map."""
    events = [
        forward(0, 300_000),
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "ts": 10, "dur": 5},  # not an all-reduce
        forward(500_000, 320_000),
        allreduce(900_000, waits_ms[0] * 1000, 2_748_741),
        allreduce(990_000, waits_ms[1] * 1000, 140_541_952),
        allreduce(995_000, 10, 479, dtype="Int"),
        allreduce(996_000, 1_300, 2),
        {"ph": "i", "name": "marker", "ts": 1},
    ]
    return {"traceEvents": events}


def test_tables_from_plain_and_gzipped_traces_and_the_kept_subset(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "profile.rank0.json").write_text(json.dumps(trace((201.5, 1.75))))
    with gzip.open(work / "profile.rank1.json.gz", "wt") as f:
        json.dump(trace((0.25, 1.5)), f)
    (work / "profile.rank0.txt").write_text("operator table")  # ignored
    assert profile_allreduce.main([str(work), "--keep", str(tmp_path / "kept")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| 0 | 1 | 300.0 | 0 | 0.00 | 0.00 | 0.00 |"
    assert out[3] == "| 0 | 2 | 320.0 | 2 | 203.25 | 201.50 | 1.31 |"
    assert out[5] == "| 1 | 2 | 320.0 | 2 | 1.75 | 1.50 | 1.31 |"
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == ["profile.rank0.nccl.json", "profile.rank1.nccl.json"]
    assert len(json.loads((tmp_path / "kept" / "profile.rank0.nccl.json").read_text())["traceEvents"]) == 6
    # The subsets alone give the same table.
    assert profile_allreduce.main([str(tmp_path / "kept")]) == 0
    assert capsys.readouterr().out.splitlines() == out


def test_unusable_inputs_are_named(tmp_path, capsys):
    assert profile_allreduce.main([str(tmp_path / "absent")]) == 2
    assert "absent: not a directory" in capsys.readouterr().err
    assert profile_allreduce.main([str(tmp_path)]) == 2
    assert "no profile.rank<r>.json" in capsys.readouterr().err
    (tmp_path / "profile.rank0.json").write_text('{"traceEvents": [')  # cut off mid-write
    assert profile_allreduce.main([str(tmp_path)]) == 2
    assert "profile.rank0.json: not a Chrome trace JSON" in capsys.readouterr().err
    (tmp_path / "profile.rank0.json").write_text(json.dumps({"traceEvents": [allreduce(1, 2, 100)]}))
    assert profile_allreduce.main([str(tmp_path)]) == 2
    assert "no 'DistributedDataParallel.forward' annotation" in capsys.readouterr().err
    bad = trace((1.0, 1.0))
    del bad["traceEvents"][3]["dur"]
    (tmp_path / "profile.rank0.json").write_text(json.dumps(bad))
    assert profile_allreduce.main([str(tmp_path)]) == 2
    assert "without a numeric ts/dur" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_allreduce.main([])
