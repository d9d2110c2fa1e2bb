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
