"""Every command block of ``docs/finetune.md`` runs (or is checked against the test that runs it), so the
guide cannot rot.

A block is a fenced ``bash`` block preceded by ``<!-- guide-test: ID -->``. Blocks in :data:`RUN` are run
in order with ``bash -euo pipefail`` in a scratch copy of the repository (``projects``, ``tools``,
``Makefile``, ``data/chase_db1`` linked; everything the commands write stays in it), with
``.venv/bin/python`` replaced by this interpreter and the training shortened through extra
``--cfg-options`` (:data:`SHORTER`); a block in :data:`FIXTURES` first gets the files it stands for
("your data") written by the test. Blocks in :data:`CHECKED` cannot run on a CPU test machine (set-up,
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

import numpy as np
import pytest
from PIL import Image

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
    "predict-tiled",
    "predict-resume",
    "export",
    "own-layout",
    "own-prepare",
    "own-convert",
    "own-split",
    "own-evaluate",
    "own-ids",
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
    "predict-tiled": r"512x512 image: masks blended from 18 forwards over 9 windows of 256 px "
    r"\(overlap 0.25, each also mirrored\)\n(.*\n)*"
    r"wrote 1 prediction\(s\) to work_dirs/my_vessels_tiny/predictions_tiled",
    "predict-resume": r"predictions.jsonl: line 2: output of 'Image_12R' "
    r"work_dirs/my_vessels_tiny/predictions/Image_12R_overlay.png is missing: recomputed\n(.*\n)*"
    r"wrote 2 prediction\(s\) to work_dirs/my_vessels_tiny/predictions \(predictions.json\)\n"
    r"--skip-existing: 1 reused from an earlier run, 1 predicted now",
    "export": r"Exported \d+ tensors .* to work_dirs/my_vessels_tiny/hf",
    "own-layout": r"wrote data/retina_raw: 28 images \(8 in test.txt\)",
    "own-prepare": r"images: 28 -> 512x512\nmasks: 56, round-trip Dice mean 0.99\d+ min",
    "own-convert": r"overall: 28 records, 28 objects, 0 px differ .* EXACT",
    "own-split": r"val: 8 records, 8 images -> data/retina/test.json\n(.*\n)*"
    r"train: 16 records, 16 images, 8 groups -> data/retina/train.json",
    "own-evaluate": r"inside the FOV \(masks data/retina/fov/\{stem\}_mask.\*; 6\d.\d % of the pixels\) "
    r"over 8 queries: Dice .* \(fixed\)",
    "own-ids": r"images: 3 -> 512x384\n"
    r"masks: 3, round-trip Dice mean 0.9\d+ min 0.9\d+ \(data/eyes_raw/ids/eye\d_ids.png\)"
    r"(.*\n)*overall: 3 records, 9 objects, 0 px differ .* EXACT\n"
    r"wrote data/eyes/annotations.json: 3 records, 9 objects in 3 questions\n"
    r"objects per record \(objects: records\): 3: 3\n"
    r"3 record\(s\) ask for several objects in one question; 3 questions, "
    r"\[SEG\] per answer \(\[SEG\]: answers\): 3: 3\n"
    r"data/eyes/annotations.json: 3 records, 9 objects, 0 problems",
}
#: The guide's id map (section 11) and the ids of the synthetic masks the test writes for it.
ID_TEXTS = {"1": "optic disc", "2": "blood vessel", "300": "fovea"}


def write_instance_id_data(folder: Path, size: tuple[int, int] = (1024, 768), n: int = 3) -> None:
    """``folder/images/eyeN.png`` (RGB) and ``folder/ids/eyeN_ids.png`` (16-bit grey: 0 background,
    1 a disc, 2 a curved band, 300 a small disc), and the guide's id map ``folder/ids.json``."""
    w, h = size
    (folder / "images").mkdir(parents=True)
    (folder / "ids").mkdir()
    yy, xx = np.mgrid[0:h, 0:w]
    s = w / 1024
    for k in range(n):
        disc = (xx - (260 + 40 * k) * s) ** 2 + (yy - 380 * s) ** 2 < (60 * s) ** 2
        band_y = (200 + 60 * k) * s + 80 * s * np.sin(xx / (90 * s))
        band = (np.abs(yy - band_y) < 5 * s) & ~disc
        fovea = (xx - 700 * s) ** 2 + (yy - (420 + 20 * k) * s) ** 2 < (30 * s) ** 2
        ids = np.zeros((h, w), np.uint16)
        ids[band], ids[disc], ids[fovea] = 2, 1, 300
        rgb = np.random.default_rng(k).integers(40, 90, (h, w, 3)).astype(np.uint8)
        rgb[disc], rgb[band], rgb[fovea] = (230, 200, 90), (150, 20, 20), (40, 20, 10)
        Image.fromarray(rgb).save(folder / f"images/eye{k}.png")
        Image.fromarray(ids).save(folder / f"ids/eye{k}_ids.png")
    (folder / "ids.json").write_text(json.dumps(ID_TEXTS))


#: Files a block stands for ("your data"), written into the scratch repository before it runs.
FIXTURES = {"own-ids": lambda root: write_instance_id_data(root / "data/eyes_raw")}


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
        if block_id in FIXTURES:
            FIXTURES[block_id](workdir)
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
    # Step 8: tiled + flip-TTA masks at full resolution, settings stored; the resumed run redid one image.
    settings = json.loads((work / "predictions_tiled/run_settings.json").read_text())["settings"]
    assert (settings["tile"], settings["flip_tta"], settings["tile_overlap"]) == ("auto", True, 0.25)
    [tiled] = json.loads((work / "predictions_tiled/predictions.json").read_text())["images"]
    assert all(Image.open(work / "predictions_tiled" / m).size == (512, 512) for m in tiled["masks"])
    assert pred["reused"] == 1 and [Path(e["image"]).name for e in pred["images"]] == [
        "Image_11L.jpg",
        "Image_12R.jpg",
    ]
    assert (work / "predictions/Image_12R_overlay.png").is_file()
    # Section 11, instance ids: 16-bit masks resized per id; the records rebuild them exactly, one turn each.
    from projects.sa2va.datasets.instance_ids import read_instance_ids, reconstruct_ids

    eyes = workdir / "data/eyes"
    records = json.loads((eyes / "annotations.json").read_text())
    assert len(records) == 3
    for record in records:
        assert record["text"] == list(ID_TEXTS.values()) and record["turns"] == [[0, 1, 2]]
        id_mask = eyes / "ids" / f"{Path(record['image']).stem}_ids.png"
        assert Image.open(id_mask).mode.startswith("I;16")
        ids = read_instance_ids(id_mask)
        assert ids.shape == (384, 512) and set(np.unique(ids).tolist()) == {0, 1, 2, 300}
        assert np.array_equal(reconstruct_ids(record, *ids.shape), ids)


def _guide_section(start: str, end: str) -> str:
    text = GUIDE.read_text()
    return text[text.index(start) : text.index(end, text.index(start))]


def test_instance_id_sentences(tmp_path: Path, capsys) -> None:
    """Section 11's sentences on instance ids that no block shows: an id without a text is an error naming
    file and id, ``--skip-unmapped-ids`` lists each with file and pixel count, two ids with one text are
    an error, ``--merge-same-text`` makes them one object; the id map forms (JSON per file, CSV); the
    example question and answer are the dataset's first templates."""
    from projects.sa2va.datasets import refseg

    section = _guide_section("### Instance-ID masks", "need no extra option")
    assert f"```json\n{json.dumps(ID_TEXTS)}\n```" in section
    spec = importlib.util.spec_from_file_location(
        "masks_to_annotations", ROOT / "tools/masks_to_annotations.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    data = tmp_path / "eyes"
    write_instance_id_data(data, size=(128, 96), n=2)

    def convert(id_map: dict | str, *flags: str) -> tuple[int, str, list[dict] | None]:
        name = "map.csv" if isinstance(id_map, str) else "map.json"
        (tmp_path / name).write_text(id_map if isinstance(id_map, str) else json.dumps(id_map))
        out = tmp_path / "out.json"
        out.unlink(missing_ok=True)
        argv = ["--images", str(data / "images"), "--masks", str(data / "ids"), "--instance-ids"]
        argv += ["--id-texts", str(tmp_path / name), "--mask-pattern", "{stem}_ids.png", "--out", str(out)]
        rc = tool.main([*argv, "--summary-only", *flags])
        captured = capsys.readouterr()
        return rc, captured.out + captured.err, json.loads(out.read_text()) if out.exists() else None

    rc, out, written = convert({"1": "optic disc", "2": "blood vessel"})
    assert rc == 1 and written is None
    assert f"{data}/ids/eye0_ids.png: id 300 (" in out and "--skip-unmapped-ids" in out
    rc, out, written = convert({"1": "optic disc", "2": "blood vessel"}, "--skip-unmapped-ids")
    assert rc == 0 and [r["text"] for r in written] == [["optic disc", "blood vessel"]] * 2
    assert re.search(rf"UNMAPPED id 300 skipped in {re.escape(str(data))}/ids/eye1_ids.png \(\d+ px\)", out)
    rc, out, written = convert({"1": "spot", "2": "blood vessel", "300": "spot"})
    assert rc == 1 and written is None and "ids [1, 300] share the text 'spot'" in out
    rc, out, written = convert({"1": "spot", "2": "blood vessel", "300": "spot"}, "--merge-same-text")
    assert (
        rc == 0
        and written[0]["text"] == ["spot", "blood vessel"]
        and written[0]["instance_ids"] == [[1, 300], [2]]
    )
    per_file = {
        "*": {"1": "optic disc", "2": "blood vessel", "300": "fovea"},
        "eye0_ids.png": {"1": "optic cup"},
    }
    rc, out, written = convert(per_file, "--one-question")
    assert rc == 0 and [r["text"][0] for r in written] == ["optic cup", "optic disc"]
    assert all(r["turns"] == [[0, 1, 2]] for r in written)
    rc, out, written = convert(
        "id,text,file\n1,optic disc,\n2,blood vessel,\n300,fovea,\n1,optic cup,eye1_ids.png\n"
    )
    assert rc == 0 and [r["text"] for r in written] == [
        list(ID_TEXTS.values()),
        ["optic cup", "blood vessel", "fovea"],
    ]
    # The example turn is what the dataset writes with its first templates (evaluation's wording).
    example = re.search(
        r"evaluation; training draws the wording at random\):\n\n```text\n(.*)\n(.*)\n```", section
    )
    stand_in = type(
        "Templates",
        (),
        {
            k.lower(): getattr(refseg, k)
            for k in (
                "QUESTION_TEMPLATES",
                "ANSWER_TEMPLATES",
                "MULTI_ANSWER_TEMPLATES",
                "OBJECT_ANSWER_TEMPLATES",
            )
        },
    )()
    turn = refseg.RefSegDataset.turn_text(stand_in, tuple(ID_TEXTS.values()), (0, 0, 0))
    assert example and example.groups() == turn


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
