"""Every command block of ``docs/finetune.md`` runs (or is checked against the test that runs it), so the
guide cannot rot.

A block is a fenced ``bash`` block preceded by ``<!-- guide-test: ID -->``. Blocks in :data:`RUN` are run
in order with ``bash -euo pipefail`` in a scratch copy of the repository (``projects``, ``tools``,
``Makefile``, ``data/chase_db1`` linked; everything the commands write stays in it), with
``.venv/bin/python`` replaced by this interpreter and the training shortened through extra
``--cfg-options`` (:data:`SHORTER`). Blocks in :data:`CHECKED` cannot run on a CPU test machine (set-up,
GPUs, a long-running server); they are checked as stated there. An unmarked ``bash`` block, or an ID in
neither table, fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs/finetune.md"
BLOCK = re.compile(r"(?:<!-- guide-test: (?P<id>[\w-]+) -->\n)?```bash\n(?P<body>.*?)```", re.DOTALL)
RUN = (
    "convert",
    "check",
    "split",
    "train-cpu",
    "watch",
    "evaluate",
    "predict",
    "export",
    "own-layout",
    "own-prepare",
    "own-convert",
    "own-split",
    "own-evaluate",
)
CHECKED = ("setup", "make-demo", "train-gpu", "demo-app")
#: Training on 1 epoch (11 iterations) with a validation at 6 and at the end, instead of 10 epochs.
SHORTER = {"train-cpu": " train_cfg.max_epochs=1 train_cfg.val_interval=6"}
#: What a block's output must show (a regular expression).
EXPECT = {
    "convert": r"overall: 28 records, 28 objects, 0 px differ .* EXACT",
    "check": r"data/my_vessels/annotations.json: 28 records, 28 objects, 0 problems",
    "split": r"train: 22 records, 22 images -> data/my_vessels/train.json\nval: 6 records",
    "train-cpu": r"The best checkpoint with [0-9.]+ val/dice_best at \d+ iter is saved",
    "watch": r"val/dice_best: [0-9.]+.*\n(.*\n)*.*-> work_dirs/my_vessels_tiny/training_curves.png",
    "evaluate": r"at 0.5; Dice [0-9.]+ / IoU [0-9.]+ / clDice [0-9.]+ at [0-9.]+ \(best on this set\)",
    "predict": r"wrote 2 prediction\(s\) to work_dirs/my_vessels_tiny/predictions \(predictions.json\)",
    "export": r"Exported \d+ tensors .* to work_dirs/my_vessels_tiny/hf",
    "own-layout": r"wrote data/retina_raw: 28 images \(8 in test.txt\)",
    "own-prepare": r"images: 28 -> 512x512\nmasks: 56, round-trip Dice mean 0.99\d+ min",
    "own-convert": r"overall: 28 records, 28 objects, 0 px differ .* EXACT",
    "own-split": r"val: 8 records, 8 images -> data/retina/test.json\n(.*\n)*"
    r"train: 16 records, 16 images, 8 groups -> data/retina/train.json",
    "own-evaluate": r"inside the FOV \(masks data/retina/fov/\{stem\}_mask.\*; 6\d.\d % of the pixels\) "
    r"over 8 queries: Dice .* \(fixed\)",
}


def guide_blocks() -> list[tuple[str, str]]:
    """``(id, commands)`` of every ``bash`` block, in order; continuation lines joined."""
    text = GUIDE.read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        line = text[: m.start("body")].count("\n")
        assert m.group("id"), f"{GUIDE}:{line}: a bash block without a '<!-- guide-test: ID -->' marker"
        blocks.append((m.group("id"), m.group("body").replace("\\\n", " ")))
    return blocks


def commands(body: str) -> list[list[str]]:
    return [shlex.split(c) for c in body.splitlines() if c.strip() and not c.lstrip().startswith("#")]


def test_every_block_is_known_and_marked() -> None:
    ids = [i for i, _ in guide_blocks()]
    assert len(ids) == len(set(ids)), f"duplicate guide-test ids in {GUIDE}: {ids}"
    assert sorted(ids) == sorted(RUN + CHECKED), f"{GUIDE}: blocks {ids}, tested {RUN + CHECKED}"
    assert "docs/finetune.md" in (ROOT / "README.md").read_text(), "README.md must link the guide"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch repository: code and the sample linked, everything else written inside it."""
    root = tmp_path_factory.mktemp("guide")
    for name in ("projects", "tools", "Makefile"):
        (root / name).symlink_to(ROOT / name)
    (root / "data").mkdir()
    (root / "data/chase_db1").symlink_to(ROOT / "data/chase_db1")
    return root


def run_block(block_id: str, body: str, cwd: Path, timeout: float = 120) -> str:
    script = body.replace(".venv/bin/python", shlex.quote(sys.executable))
    if block_id in SHORTER:
        script = script.rstrip("\n") + SHORTER[block_id] + "\n"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"guide block {block_id!r} failed ({proc.returncode}):\n{script}\n{out[-3000:]}"
    )
    return out


def test_the_guide_runs_end_to_end(workdir: Path) -> None:
    blocks = dict(guide_blocks())
    for block_id in RUN:
        start = time.monotonic()
        out = run_block(block_id, blocks[block_id], workdir)
        assert re.search(EXPECT[block_id], out), (
            f"guide block {block_id!r}: no {EXPECT[block_id]!r} in\n{out[-3000:]}"
        )
        print(f"guide block {block_id}: {time.monotonic() - start:.1f} s")
    work = workdir / "work_dirs/my_vessels_tiny"
    threshold = json.loads((work / "eval/best_threshold.json").read_text())["threshold"]
    pred = json.loads((work / "predictions/predictions.json").read_text())
    assert pred["threshold"] == threshold  # predict used the evaluated threshold
    assert (work / "hf/config.json").is_file() and (work / "training_curves.png").is_file()
    assert (workdir / "data/my_vessels/train.json").is_file()  # written in the scratch copy
    retina = json.loads((work / "eval_retina/report.json").read_text())
    assert retina["n_queries"] == 8 and retina["fov"]["at_0.5"]["n_queries"] == 8
    assert retina["fov"]["threshold_chosen_on"] == "validation set data/retina/val.json, inside the FOV"
    assert (work / "eval_retina/fov/best_threshold.json").is_file()
    val_children = {r["image"][:2] for r in json.loads((workdir / "data/retina/val.json").read_text())}
    train_children = {r["image"][:2] for r in json.loads((workdir / "data/retina/train.json").read_text())}
    assert len(val_children) == 2 and not val_children & train_children  # both eyes on one side


def _make_dry_run(target: str) -> str:
    proc = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_setup_and_demo_blocks_are_make_targets() -> None:
    blocks = dict(guide_blocks())
    assert commands(blocks["setup"]) == [["make", "setup"]]
    assert commands(blocks["make-demo"]) == [["make", "demo"]]
    assert "bash tools/setup.sh" in _make_dry_run("setup")  # what CI runs before every test run
    # `make demo` is the demo command itself; it trains the train-cpu block's config with the same tool.
    assert "tools/demo.py" in _make_dry_run("demo")
    demo = (ROOT / "tools/demo.py").read_text()
    [train] = commands(dict(guide_blocks())["train-cpu"])
    assert f'DEFAULT_CONFIG = "{train[2]}"' in demo and '"tools/train.py"' in demo


def test_gpu_training_block_matches_the_launcher() -> None:
    """``dist.sh`` itself is run by ``tests/tools/test_dist.py``; here: the block's config exists and
    the launcher accepts the arguments (``train CONFIG NGPUS``)."""
    [cmd] = commands(dict(guide_blocks())["train-gpu"])
    assert cmd[:3] == ["bash", "tools/dist.sh", "train"]
    assert (ROOT / cmd[3]).is_file() and cmd[4].isdigit() and 1 <= int(cmd[4]) <= 8
    assert "tools/dist.sh" in (ROOT / "tests/tools/test_dist.py").read_text()


def test_demo_app_block_parses_and_is_what_the_browser_test_runs() -> None:
    """The server itself is started and driven by ``tests/app`` (``--port 0``, same flags)."""
    [cmd] = commands(dict(guide_blocks())["demo-app"])
    assert cmd[:2] == [".venv/bin/python", "tools/demo_app.py"]
    spec = importlib.util.spec_from_file_location("demo_app_tool", ROOT / "tools/demo_app.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(cmd[2:])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert args.threshold_file.endswith("eval/best_threshold.json")
    flags = {a for a in cmd if a.startswith("--")}
    app_test = (ROOT / "tests/app/conftest.py").read_text()
    assert all(f'"{f}"' in app_test for f in flags), f"tests/app does not run demo_app.py with {flags}"
