"""Test helpers for the scripts run as subprocesses from the repo root (tools/*.sh, bench/gpu/*)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on localhost now (for torchrun's rendezvous / MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gpu_script(script: str, timeout: float = 900, **env: str) -> tuple[int, str]:
    """``bash bench/gpu/<script>`` on CPU with ``PYTHON`` = this interpreter, a free ``PORT`` and ``env``;
    returns (exit status, stdout + stderr)."""
    full_env = {**os.environ, "PYTHON": sys.executable, "PORT": str(free_port()), **env}
    proc = subprocess.run(
        ["bash", f"bench/gpu/{script}"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


#: The small resumable training run of the resume tests (``tests/engine/configs/tiny_fault.py``).
TINY_FAULT_CFG = "tests/engine/configs/tiny_fault.py"
TINY_FAULT_OPTIONS = (
    "train_dataloader.dataset.ann_file=data/chase_db1/annotations_test.json",
    "train_cfg.max_epochs=1.5",
    "default_hooks.checkpoint.interval=2",
    "model.lora.dropout=0.1",
)


def start_tiny_fault_training(
    work_dir: Path, *extra: str, log: str, cfg_options: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``tools/train.py`` on :data:`TINY_FAULT_CFG` with :data:`TINY_FAULT_OPTIONS` + ``cfg_options`` in the
    background (one thread), output to ``work_dir.parent / log``; ``extra`` are more train.py arguments."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "tools/train.py", TINY_FAULT_CFG, "--work-dir", str(work_dir), *extra]
    cmd += ["--cfg-options", *TINY_FAULT_OPTIONS, *cfg_options]
    with open(work_dir.parent / log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
