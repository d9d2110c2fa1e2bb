"""Demo-app fixtures: the tiny overfit checkpoint and ``tools/demo_app.py`` running on it as a subprocess.

The subprocess gets its own empty ``HOME`` and ``TMPDIR`` so that the tests can check it writes nothing
outside its temporary folder and removes that folder on exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.app.tiny_checkpoint import MAX_TILES, TINY_MODEL_CFG, overfit_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = 600 * 600  # the 512x512 samples pass, a 700x600 image does not
START_TIMEOUT_S = 120


@dataclass
class DemoServer:
    url: str
    proc: subprocess.Popen
    home: Path
    tmpdir: Path
    output: list[str] = field(default_factory=list)

    def request(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict | str]:
        """One HTTP request to the demo (loopback only); JSON answers are decoded."""
        req = urllib.request.Request(self.url.rstrip("/") + path, data=body, headers=headers or {})
        if body is not None:
            req.method = "POST"
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            status, ctype, raw = e.code, e.headers.get("Content-Type", ""), e.read()
        return status, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return overfit_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def demo_server(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[DemoServer]:
    """``tools/demo_app.py --port 0`` on the tiny checkpoint; stopped with SIGTERM at the end of the session,
    then checked to have exited with 0 and left nothing in its ``HOME`` and ``TMPDIR``."""
    base = tmp_path_factory.mktemp("demo_app")
    home, tmpdir = base / "home", base / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    threshold_file = base / "best_threshold.json"
    threshold_file.write_text(json.dumps({"threshold": 0.5}))
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    env.pop("MPLCONFIGDIR", None)
    cmd = [
        sys.executable,
        str(ROOT / "tools/demo_app.py"),
        "--config",
        str(TINY_MODEL_CFG),
        "--checkpoint",
        str(tiny_checkpoint),
        "--max-tiles",
        str(MAX_TILES),
        "--threshold-file",
        str(threshold_file),
        "--max-pixels",
        str(MAX_PIXELS),
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def pump() -> None:  # keeps the pipe drained for the whole run
        for line in proc.stdout:
            output.append(line)
            if line.startswith("Sa2VA demo: http://"):
                url.append(line.split(": ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.2) and time.monotonic() < deadline:
        pass
    if not url:
        proc.kill()
        proc.wait()
        pytest.fail("demo_app.py did not print its URL:\n" + "".join(output[-40:]))
    server = DemoServer(url=url[0], proc=proc, home=home, tmpdir=tmpdir, output=output)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # Teardown checks: a clean exit on SIGTERM, and nothing left on disk by the app.
    log = "".join(output[-40:])
    assert proc.returncode == 0, f"demo_app.py exited with {proc.returncode}:\n{log}"
    left = sorted(str(p.relative_to(base)) for p in [*home.rglob("*"), *tmpdir.rglob("*")])
    assert not left, f"demo_app.py left files behind: {left}"
