"""tools/dist.sh on CPU (gloo): two ranks train with distinct data shards and log once; two "nodes" on
localhost; a failing rank or a broken config makes dist.sh exit non-zero with the error visible."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
CFG = "tests/engine/configs/tiny_fault.py"


def dist(*args: str, env: dict | None = None, wait: bool = True, timeout: float = 300):
    full_env = {**os.environ, "PORT": str(free_port()), **(env or {})}
    proc = subprocess.Popen(
        ["bash", "tools/dist.sh", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def train_two_ranks(work_dir: Path, *cfg_options: str) -> tuple[int, str]:
    """``dist.sh train`` of :data:`CFG` on 2 ranks into ``work_dir`` with ``--cfg-options``."""
    return dist("train", CFG, "2", "--work-dir", str(work_dir), "--cfg-options", *cfg_options)


@pytest.mark.slow
def test_two_ranks_train_distinct_shards_and_log_once(tmp_path):
    rc, out = train_two_ranks(tmp_path, "train_cfg.max_epochs=0.4", "custom_hooks.3.all_ranks=True")
    assert rc == 0, out[-4000:]
    ids = {}
    for rank in (0, 1):
        lines = (tmp_path / f"train_losses.rank{rank}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["iter"] for r in records] == [1, 2], out[-4000:]
        ids[rank] = [i for r in records for i in r["image_ids"]]
    assert len(ids[0]) == len(ids[1]) == 4
    assert not set(ids[0]) & set(ids[1]), f"ranks saw the same images: {ids}"
    # rank 1's logger prints errors only: every info line appears once
    assert out.count("global batch = 2 per rank x 1 accumulation x 2 ranks = 4") == 1, out[-4000:]
    assert out.count("Iter(train) [1/2]") == 1 and out.count("Iter(train) [2/2]") == 1, out[-4000:]
    assert "UserWarning: Setting MKL_NUM_THREADS" not in out, out[-4000:]


@pytest.mark.slow
def test_two_ranks_with_loader_workers_train_the_batches_of_one_iterator_per_epoch(tmp_path):
    """With loader workers each rank iterates one DataLoader over all epochs (``EpochChain``); its batches
    over 2.5 epochs (8 images, 2 per rank per iteration: 2 iterations per epoch) are those of the run
    without workers, which makes one iterator per epoch."""
    ids = {}
    for workers in (0, 2):
        work = tmp_path / f"w{workers}"
        rc, out = train_two_ranks(
            work,
            "train_dataloader.dataset.ann_file=data/chase_db1/annotations_test.json",
            "train_cfg.max_epochs=2.5",
            "custom_hooks.3.all_ranks=True",
            f"train_dataloader.num_workers={workers}",
            f"train_dataloader.persistent_workers={workers > 0}",
        )
        assert rc == 0, out[-4000:]
        for rank in (0, 1):
            lines = (work / f"train_losses.rank{rank}.jsonl").read_text().splitlines()
            ids[workers, rank] = [json.loads(line)["image_ids"] for line in lines]
    for rank in (0, 1):
        assert len(ids[0, rank]) == 5 and ids[2, rank] == ids[0, rank], ids
    assert ids[0, 0][:2] != ids[0, 0][2:4]  # the epochs differ: the comparison sees the order


@pytest.mark.slow
def test_two_nodes_on_localhost(tmp_path):
    port = str(free_port())
    args = ("train", CFG, "1", "--work-dir", str(tmp_path), "--cfg-options", "train_cfg.max_epochs=0.1")
    nodes = [dist(*args, env={"NNODES": "2", "NODE_RANK": str(r), "PORT": port}, wait=False) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "x 2 ranks = 4 samples per optimiser step" in outs[0]
    assert (tmp_path / "iter_1.pth").is_file()


@pytest.mark.slow
def test_failing_rank_exits_nonzero_with_its_error(tmp_path):
    rc, out = train_two_ranks(
        tmp_path, "train_cfg.max_epochs=0.2", "custom_hooks.1.rank=1", "custom_hooks.1.at=0"
    )
    assert rc != 0
    assert (
        "rank 1 (local rank 1) [FIRST FAILURE]: RuntimeError: injected failure on rank 1 at iteration 0"
        in out
    )
    assert "dist.sh: exit status" in out


@pytest.mark.slow
def test_broken_config_exits_nonzero(tmp_path):
    bad = tmp_path / "broken_cfg.py"
    bad.write_text("model = dict(type=\n")
    rc, out = dist("train", str(bad), "2", "--work-dir", str(tmp_path / "w"))
    assert rc != 0
    assert "broken_cfg.py" in out and "SyntaxError" in out, out[-3000:]
    rc, out = dist("train", str(tmp_path / "missing.py"), "2")
    assert rc == 2 and "not found" in out
    rc, out = dist("train", str(bad), "two")
    assert rc == 2 and "NGPUS must be a positive integer" in out
