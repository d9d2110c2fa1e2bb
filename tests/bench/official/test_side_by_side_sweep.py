"""The side-by-side benchmark's batch sweep (bench/official/speed_side_by_side.py ``sweep``): doubling, then
bisection over multiples of ``refine`` through the toolkit's batch search, rows saved after every batch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def sbs():
    path = ROOT / "bench/official/speed_side_by_side.py"
    spec = importlib.util.spec_from_file_location("sbs_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_measure(limit: int, tried: list[int], fail_with: Exception | None = None, fail_at: int = 0):
    def measure(bsz: int) -> dict:
        tried.append(bsz)
        if fail_with is not None and bsz == fail_at:
            raise fail_with
        if bsz > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {bsz} GiB")
        return {"side": "ref", "batch": bsz, "samples_per_s": float(bsz)}

    return measure


def test_doubling_then_bisection_over_multiples_of_refine(sbs) -> None:
    tried, saved = [], []
    rows = sbs.sweep("ref", 2, 64, fake_measure(27, tried), 8, lambda r: saved.append(list(r)))
    assert tried == [2, 4, 8, 16, 32, 24]
    assert [r["batch"] for r in rows] == tried
    assert rows[4] == {"side": "ref", "batch": 32, "error": "out of memory at batch 32"}
    assert "error" not in rows[5]  # 24 fits: the largest batch measured
    assert len(saved) == len(tried) and saved[-1] == rows  # saved after every batch


def test_no_refine_is_doubling_only_and_the_cap_ends_it(sbs) -> None:
    tried = []
    rows = sbs.sweep("ref", 2, 16, fake_measure(100, tried), 0, lambda r: None)
    assert tried == [2, 4, 8, 16] and all("error" not in r for r in rows)
    tried = []
    sbs.sweep("ref", 2, 64, fake_measure(27, tried), 0, lambda r: None)
    assert tried == [2, 4, 8, 16, 32]


def test_first_batch_starts_the_sweep_higher(sbs) -> None:
    tried = []
    sbs.sweep("official", 32, 128, fake_measure(50, tried), 8, lambda r: None)
    assert tried == [32, 64, 48, 56]


def test_another_error_is_recorded_and_ends_the_sweep(sbs) -> None:
    tried = []
    measure = fake_measure(100, tried, ValueError("bad shape\nmore"), 8)
    rows = sbs.sweep("ckpt", 2, 64, measure, 8, lambda r: None)
    assert tried == [2, 4, 8]
    assert rows[-1] == {"side": "ckpt", "batch": 8, "error": "ValueError: bad shape"}


def test_summary_names_the_largest_batch_and_why_the_sweep_stopped(sbs) -> None:
    rows = sbs.sweep("ref", 2, 64, fake_measure(27, []), 8, lambda r: None)
    lines = sbs.summarise("4b", rows, "GPU", 64)
    assert "largest batch measured: ref 24 (out of memory at batch 32)" in lines


def test_the_official_side_gets_its_namespace_package_not_the_toolkits(sbs, tmp_path, monkeypatch) -> None:
    """The official ``projects`` has no ``__init__.py``; the toolkit's regular package would win over it from
    anywhere on the path, so the checkout inherited through ``PYTHONPATH`` (as ``PYTHONPATH=/tmp/site:$PWD``
    on the GPU box gave it, session 9) must not reach the official side."""
    import subprocess

    src = tmp_path / "src"
    (src / "projects/sa2va/models").mkdir(parents=True)  # a namespace package, as the official source
    (src / "projects/sa2va/models/sa2va.py").write_text("")
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT}:{ROOT}/")
    env = sbs.child_env([str(src)])
    assert env["PYTHONPATH"].split(":") == [str(src), str(site)]
    probe = [sys.executable, "-c", "import projects.sa2va.models.sa2va as m; print(m.__file__)"]

    def resolved(e: dict) -> Path:
        out = subprocess.run(probe, env=e, cwd=tmp_path, capture_output=True, text=True, check=True)
        return Path(out.stdout.strip()).resolve()

    assert resolved(env).is_relative_to(src.resolve())
    unfiltered = dict(env, PYTHONPATH=f"{src}:{site}:{ROOT}")
    assert resolved(unfiltered).is_relative_to(ROOT)  # what broke the official side's import before
    assert sbs.child_env([str(ROOT)])["PYTHONPATH"].split(":") == [str(ROOT), str(site)]  # toolkit sides


def test_the_deepspeed_step_gets_a_one_process_group(sbs, tmp_path) -> None:
    """Session 10's H100 call: ``OFFICIAL_STEP=ds`` stopped at DeepSpeed's ``LOCAL_RANK`` assertion (the
    side runs without a launcher). The filled-in variables let DeepSpeed initialise a one-process group."""
    env = {"MASTER_PORT": "29999"}
    sbs.one_process_group_env(env)
    assert env == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }
    fresh: dict[str, str] = {"LOCAL_RANK": "3"}
    sbs.one_process_group_env(fresh)
    assert fresh["LOCAL_RANK"] == "3" and 0 < int(fresh["MASTER_PORT"]) < 65536

    pytest.importorskip("deepspeed")
    script = tmp_path / "init.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(sbs.__file__).parent)!r})\n"
        "import speed_side_by_side as sbs\n"
        "import deepspeed, torch.distributed as dist\n"
        "sbs.one_process_group_env(os.environ)\n"
        "deepspeed.init_distributed(dist_backend='gloo')\n"
        "print('group', dist.get_rank(), dist.get_world_size())\n"
    )
    clean = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    proc = subprocess.run(
        [sys.executable, str(script)], env=clean, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "group 0 1" in proc.stdout
