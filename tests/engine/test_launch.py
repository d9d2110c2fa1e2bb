"""The training launch path (engine/launch.py, engine/config_file.py, tools/train.py).

A leaf config copied to a folder of one's own trains through ``tools/train.py`` (its ``_base_`` files
read from the package), its first losses equal the golden trajectory's, and the terminal shows a short
header while the log file keeps mmengine's full environment and config dump.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from projects.sa2va.engine.config_file import (
    PACKAGE_CONFIGS,
    ConfigFileError,
    package_base_imports,
    read_config,
)
from projects.sa2va.engine.hooks import read_loss_records
from projects.sa2va.engine.launch import LAUNCHERS, apply_launch_options, checkpoint_seed

ROOT = Path(__file__).resolve().parents[2]
DEMO = PACKAGE_CONFIGS / "sa2va_tiny_demo.py"
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_demo_trajectory.json"


def run_train(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_exits_zero_and_names_every_option():
    proc = run_train("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--work-dir", "--resume", "--deepspeed", "--seed", "--cfg-options", "--launcher"):
        assert option in proc.stdout


def test_cli_launchers_are_the_library_ones():
    import tools.train as train_tool

    assert train_tool.LAUNCHERS == LAUNCHERS


def test_missing_and_broken_configs_exit_with_the_file_named(tmp_path):
    proc = run_train(str(tmp_path / "missing.py"), timeout=120)
    assert proc.returncode == 1 and "missing.py not found" in proc.stderr
    bad = tmp_path / "broken_cfg.py"
    bad.write_text("model = dict(type=\n")
    proc = run_train(str(bad), timeout=120)
    assert proc.returncode == 1 and "broken_cfg.py" in proc.stderr and "SyntaxError" in proc.stderr


@pytest.mark.slow
def test_copied_leaf_config_trains_two_iterations_with_a_quiet_terminal(tmp_path):
    mine = tmp_path / "my_configs"
    mine.mkdir()
    shutil.copy(DEMO, mine / "sa2va_tiny_demo.py")
    assert not (mine / "_base_").exists()
    work = tmp_path / "work"
    # 20 training images, batch 2: 0.2 epochs = 2 iterations (then the end-of-training validation).
    proc = run_train(
        str(mine / "sa2va_tiny_demo.py"), "--work-dir", str(work), "--cfg-options", "train_cfg.max_epochs=0.2"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"_base_ not next to the config: read from {PACKAGE_CONFIGS}" in out
    records = read_loss_records(work / "train_losses.jsonl")
    assert sorted(records) == [1, 2]
    golden = json.loads(GOLDEN.read_text())["losses"]
    for it in (1, 2):
        for key in ("loss", "loss_lm", "loss_mask", "loss_dice", "lr"):
            want = golden[key][it - 1]
            assert abs(records[it][key] - want) <= 1e-6 + 1e-6 * abs(want), (it, key, records[it][key], want)
    assert (work / "iter_2.pth").is_file()
    assert (work / "sa2va_tiny_demo.py").is_file()  # mmengine's dump, under the copied file's name

    # Quiet terminal: one header line naming the log file; the full dump is in that file only.
    (log_file,) = list(work.glob("*/*.log"))
    assert f"full config and hook order in {log_file}" in out
    for dumped in ("System environment:", "INFO - Config:\n", "Hooks will be executed in the following"):
        assert dumped not in out
        assert dumped in log_file.read_text()
    assert "SyncBatchNorm" not in out  # mmengine's notice for models without BatchNorm
    assert len(out.splitlines()) < 60, out


def test_copied_config_reads_package_bases_and_keeps_its_own(tmp_path):
    shutil.copy(PACKAGE_CONFIGS / "sa2va_finetune.py", tmp_path / "sa2va_finetune.py")
    assert package_base_imports(tmp_path / "sa2va_finetune.py") == ["_base_"]
    cfg = read_config(tmp_path / "sa2va_finetune.py")
    assert cfg.filename == str(tmp_path / "sa2va_finetune.py")
    reference = Config.fromfile(str(PACKAGE_CONFIGS / "sa2va_finetune.py"))
    assert cfg.to_dict() == reference.to_dict()

    # A leaf importing a sibling leaf (the test configs' pattern) finds the sibling in the package too.
    header = "from mmengine.config import read_base\n\nwith read_base():\n"
    (tmp_path / "on_demo.py").write_text(
        header + "    from .sa2va_tiny_demo import *\n\nlr = 0.5\noptim_wrapper.optimizer.lr = lr\n"
    )
    assert read_config(tmp_path / "on_demo.py").lr == 0.5

    # An own `_base_/` folder next to the copy is used, not the package's.
    own = tmp_path / "own"
    shutil.copytree(PACKAGE_CONFIGS / "_base_", own / "_base_")
    shutil.copy(DEMO, own / "sa2va_tiny_demo.py")
    runtime = own / "_base_" / "default_runtime.py"
    runtime.write_text(runtime.read_text().replace("randomness = dict(seed=0,", "randomness = dict(seed=7,"))
    assert package_base_imports(own / "sa2va_tiny_demo.py") == []
    assert read_config(own / "sa2va_tiny_demo.py").randomness.seed == 7

    # Files inside the package are read as they are; a base found nowhere is an error naming it.
    assert package_base_imports(DEMO) == []
    (tmp_path / "lost.py").write_text(header + "    from ._nowhere_.x import *\n")
    with pytest.raises(ConfigFileError, match=r"lost\.py.*_nowhere_"):
        read_config(tmp_path / "lost.py")
    with pytest.raises(FileNotFoundError, match=r"absent\.py"):
        read_config(tmp_path / "absent.py")


def test_launch_options(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = apply_launch_options(read_config(DEMO), work_dir=tmp_path / "w", resume="auto", seed=5)
    assert cfg.work_dir == str(tmp_path / "w") and cfg.resume is True and cfg.load_from is None
    assert cfg.randomness.seed == 5 and cfg.launcher == "none" and os.environ["LOCAL_RANK"] == "0"

    cfg = read_config(DEMO)
    cfg.work_dir = None
    cfg = apply_launch_options(cfg, launcher="pytorch")
    assert cfg.work_dir == str(Path("work_dirs") / "sa2va_tiny_demo") and cfg.launcher == "pytorch"
    assert cfg.resume is False and cfg.randomness.seed == 0

    # Resuming from a path: the checkpoint's recorded seed wins over --seed (as xtuner's train tool did).
    ckpt = tmp_path / "iter_4.pth"
    torch.save({"state_dict": {}, "meta": {"seed": 123, "iter": 4}}, ckpt)
    assert checkpoint_seed(ckpt) == 123
    cfg = apply_launch_options(read_config(DEMO), resume=ckpt, seed=5)
    assert cfg.resume is True and cfg.load_from == str(ckpt) and cfg.randomness.seed == 123

    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        apply_launch_options(read_config(DEMO), resume=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="slurmish"):
        apply_launch_options(read_config(DEMO), launcher="slurmish")


def test_demo_names_a_checkpoint_outside_the_repository(tmp_path):
    """``tools/demo.py --work-dir`` outside the repository once crashed at its last line (relative_to)."""
    import tools.demo as demo

    assert demo.shown(tmp_path / "iter_2.pth") == tmp_path / "iter_2.pth"
    assert demo.shown(ROOT / "work_dirs/x/iter_2.pth") == Path("work_dirs/x/iter_2.pth")
