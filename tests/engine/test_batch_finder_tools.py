"""``tools/find_batch.py`` and ``tools/train.py --auto-batch`` end to end on the tiny demo (CPU).

The CPU gives no out-of-memory signal, so ``--max-batch`` bounds these searches (the back-off on
out-of-memory errors is tested in ``test_batch_finder.py``). What these show: the real steps run in a child
process on the config's data, the record and the printed options, the accumulation that keeps the global
batch, and that the search leaves the trained model alone (the first losses equal the golden trajectory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects.sa2va.engine.config_file import PACKAGE_CONFIGS
from projects.sa2va.engine.hooks import read_loss_records

ROOT = Path(__file__).resolve().parents[2]
DEMO = PACKAGE_CONFIGS / "sa2va_tiny_demo.py"
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_demo_trajectory.json"


def run_tool(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_find_batch_tool_records_the_search_and_prints_the_options(tmp_path):
    # The demo with 4 samples per step (batch 2 x accumulation 2): divisors 1, 2, 4 are tried.
    proc = run_tool(
        "find_batch.py", str(DEMO), "--max-batch", "4", "--work-dir", str(tmp_path),
        "--cfg-options", "optim_wrapper.accumulative_counts=2",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    report = json.loads((tmp_path / "auto_batch.json").read_text())
    assert [(t["batch"], t["outcome"]) for t in report["trials"]] == [(1, "ok"), (2, "ok"), (4, "ok")]
    assert all(t["seconds"] > 0 and t["peak_bytes"] is None for t in report["trials"])  # CPU: no peak
    assert report["largest_fit"] == 4 and report["reason"] == "reached the largest batch allowed (4)"
    assert (report["batch_size"], report["accumulative_counts"]) == (4, 1)
    assert report["global_batch"] == report["config_global_batch"] == 4 and report["global_batch_kept"]
    assert (report["config_batch_size"], report["config_accumulative_counts"]) == (2, 2)
    assert report["device"] == "cpu" and report["torch_version"] and report["world_size"] == 1
    assert report["policy"] == "exact" and report["config"] == str(DEMO)
    assert report["cfg_options"] == ["train_dataloader.batch_size=4", "optim_wrapper.accumulative_counts=1"]
    assert "--cfg-options train_dataloader.batch_size=4 optim_wrapper.accumulative_counts=1" in proc.stdout
    assert "global batch 4 (the config's: 4)" in proc.stdout


@pytest.mark.slow
def test_train_auto_batch_search_leaves_the_trained_model_alone(tmp_path):
    """The demo's batch 2 x 1: the search (batches 1 and 2, real steps in a child process) picks 2; the
    training then makes exactly the golden trajectory's first losses, as a run without the search does."""
    work = tmp_path / "work"
    proc = run_tool(
        "train.py", str(DEMO), "--auto-batch", "--max-batch", "8", "--work-dir", str(work),
        "--cfg-options", "train_cfg.max_epochs=0.2",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    report = json.loads((work / "auto_batch.json").read_text())
    assert [t["batch"] for t in report["trials"]] == [1, 2]  # the exact policy stops at 2 x 1 samples
    assert (report["batch_size"], report["accumulative_counts"], report["largest_fit_per_rank"]) == (
        2,
        1,
        [2],
    )
    assert "--auto-batch: train_dataloader.batch_size=2, optim_wrapper.accumulative_counts=1" in out
    records = read_loss_records(work / "train_losses.jsonl")
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert sorted(records) == [1, 2]
    for it in (1, 2):
        for key in ("loss", "loss_lm", "loss_mask", "loss_dice", "lr"):
            want = golden[key][it - 1]
            assert abs(records[it][key] - want) <= 1e-6 + 1e-6 * abs(want), (it, key, records[it][key], want)


@pytest.mark.slow
def test_train_auto_batch_applies_the_batch(tmp_path):
    work = tmp_path / "work"
    # 2 x 4 = 8 samples per step; the cap 4 gives batch 4 x accumulation 2; 0.2 epochs of 5 batches: 1 step
    proc = run_tool(
        "train.py", str(DEMO), "--auto-batch", "--max-batch", "4", "--work-dir", str(work),
        "--cfg-options", "optim_wrapper.accumulative_counts=4", "train_cfg.max_epochs=0.2",
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "global batch = 4 per rank x 2 accumulation x 1 ranks = 8 samples per optimiser step" in out
    report = json.loads((work / "auto_batch.json").read_text())
    assert [t["batch"] for t in report["trials"]] == [1, 2, 4]
    assert (report["batch_size"], report["accumulative_counts"], report["global_batch"]) == (4, 2, 8)
    assert sorted(read_loss_records(work / "train_losses.jsonl")) == [1]


@pytest.mark.slow
def test_train_auto_batch_on_cpu_without_a_cap_keeps_the_config(tmp_path):
    work = tmp_path / "work"
    options = ["--cfg-options", "train_cfg.max_epochs=0.1"]
    proc = run_tool("train.py", str(DEMO), "--auto-batch", "--work-dir", str(work), *options)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "cannot search" in out and "keeping the config's batch" in out
    report = json.loads((work / "auto_batch.json").read_text())
    assert report["searched"] is False and report["trials"] == [] and report["largest_fit"] is None
    assert (report["batch_size"], report["accumulative_counts"]) == (2, 1)


def test_cli_refuses_bad_combinations():
    proc = run_tool("train.py", "--help", timeout=120)
    assert proc.returncode == 0 and "--auto-batch" in proc.stdout and "--max-batch" in proc.stdout
    proc = run_tool("train.py", str(DEMO), "--max-batch", "4", timeout=120)
    assert proc.returncode == 2 and "--max-batch needs --auto-batch" in proc.stderr
    proc = run_tool("find_batch.py", str(DEMO), "--max-batch", "0", timeout=120)
    assert proc.returncode == 2 and "--max-batch must be >= 1, got 0" in proc.stderr
    proc = run_tool("find_batch.py", str(DEMO), "--headroom", "1.5", timeout=120)
    assert proc.returncode == 2 and "--headroom must be in [0, 1), got 1.5" in proc.stderr


@pytest.mark.slow
def test_dist_sh_two_ranks_search_and_agree(tmp_path):
    """``bash tools/dist.sh train CONFIG 2 --auto-batch``: each rank searches in its own child process, the
    ranks meet at the process group's start and all train with the same batch; rank 0 records it."""
    from tests.procs import free_port

    work = tmp_path / "work"
    env = dict(os.environ, PORT=str(free_port()), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", "tools/dist.sh", "train", str(DEMO), "2", "--auto-batch", "--max-batch", "4",
         "--work-dir", str(work), "--cfg-options", "optim_wrapper.accumulative_counts=4",
         "train_cfg.max_iters=1", "train_cfg.max_epochs=None"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("batch finder: batch 4: ok") == 2  # one search per rank
    assert "global batch = 4 per rank x 2 accumulation x 2 ranks = 16 samples per optimiser step" in out
    report = json.loads((work / "auto_batch.json").read_text())
    assert report["largest_fit_per_rank"] == [4, 4] and report["world_size"] == 2
    assert (report["batch_size"], report["accumulative_counts"], report["global_batch"]) == (4, 2, 16)
    assert report["samples_per_rank"] == 10  # 20 training images over 2 ranks
    assert report["reason"].startswith("rank 0: reached the largest batch allowed (4); rank 1: ")
