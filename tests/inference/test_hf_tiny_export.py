"""HF exports of a non-official grounding encoder (config.json ``sa2va_toolkit`` section).

* the tiny Sa2VA (SAM2 Hiera 4x16 at 256 px) exported by ``tools/convert_to_hf.py`` and predicted with
  ``tools/predict.py --hf`` gives the same answers and masks as ``tools/predict.py --config
  --checkpoint``; the in-process predictors agree on the probabilities within 1e-5;
* a mask upsampler's settings and weights (``sa2va_extensions.safetensors``) come back from the folder;
* a malformed section is refused, naming config.json and the field;
* the official grounding encoder (SAM2 Hiera-L, no upsampler) writes no section, and the export of an
  official-shape model writes the config.json the official schema gives, unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from projects.sa2va.checkpoint.hf_sa2va import (
    OFFICIAL_GROUNDING_ENCODER,
    TOOLKIT_SECTION,
    export_hf_folder,
    grounding_encoder_section,
    official_config,
)
from projects.sa2va.hf_folder import HFFolderError
from projects.sa2va.inference.predictor import Sa2VAPredictor
from tests.app.tiny_checkpoint import MAX_TILES, PROMPT, TINY_MODEL_CFG, overfit_checkpoint

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data/chase_db1/images"
NAMES = ["Image_01L.jpg", "Image_11L.jpg"]


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> tuple[Path, Path]:
    """(overfit tiny checkpoint, its HF export written by tools/convert_to_hf.py)."""
    ckpt = overfit_checkpoint(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("tiny_hf") / "hf"
    res = _tool("convert_to_hf.py", str(TINY_MODEL_CFG), str(ckpt), "--save-path", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return ckpt, out


@pytest.mark.slow
def test_export_records_the_tiny_grounding_encoder(tiny_export) -> None:
    _, hf = tiny_export
    section = json.loads((hf / "config.json").read_text())[TOOLKIT_SECTION]
    encoder = section["grounding_encoder"]
    assert set(section) == {"grounding_encoder"}
    assert encoder["config_name"] == "sam2_hiera_l.yaml" and encoder["upsampler"] is None
    assert encoder["overrides"]["image_size"] == 256
    assert encoder["overrides"]["image_encoder"]["trunk"]["embed_dim"] == 16


def test_export_keeps_the_training_tiling(tiny_export) -> None:
    """config.json carries the tiling the tiny model trained with (its processor: one tile), not the
    official defaults (1 / 12 / thumbnail), so ``predict --hf`` preprocesses as training did."""
    ckpt, hf = tiny_export
    cfg = json.loads((hf / "config.json").read_text())
    trained = Sa2VAPredictor.from_config(TINY_MODEL_CFG, ckpt).processor.image_processor
    want = (trained.min_tiles, trained.max_tiles, trained.use_thumbnail)
    assert (cfg["min_dynamic_patch"], cfg["max_dynamic_patch"], cfg["use_thumbnail"]) == want
    assert want[1] == 1
    exported = Sa2VAPredictor.from_hf(hf).processor.image_processor
    assert (exported.min_tiles, exported.max_tiles, exported.use_thumbnail) == want


@pytest.mark.slow
def test_predict_hf_equals_predict_config(tiny_export, tmp_path: Path) -> None:
    ckpt, hf = tiny_export
    images = [str(IMAGES / n) for n in NAMES]
    common = ["--images", *images, "--prompt", PROMPT, "--max-tiles", str(MAX_TILES)]
    out_hf, out_cfg = tmp_path / "hf", tmp_path / "cfg"
    # No precision option: the folder's config.json says float32 (the tiny model's), and from_hf follows it.
    res = _tool("predict.py", "--hf", str(hf), "--out-dir", str(out_hf), *common)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _tool(
        "predict.py", "--config", str(TINY_MODEL_CFG), "--checkpoint", str(ckpt),
        "--out-dir", str(out_cfg), *common,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rep_hf = json.loads((out_hf / "predictions.json").read_text())["images"]
    rep_cfg = json.loads((out_cfg / "predictions.json").read_text())["images"]
    assert [e["text"] for e in rep_hf] == [e["text"] for e in rep_cfg]
    assert sum(e["num_masks"] for e in rep_hf) >= 1, "the overfit model must answer with [SEG]"
    for a, b in zip(rep_hf, rep_cfg, strict=True):
        assert a["num_masks"] == b["num_masks"] and a["foreground_fraction"] == b["foreground_fraction"]
        for name in a["masks"] + a["probs"]:
            arr_hf = np.asarray(Image.open(out_hf / name))
            arr_cfg = np.asarray(Image.open(out_cfg / name))
            assert np.array_equal(arr_hf, arr_cfg), name

    # Probabilities (the PNGs above are 8-bit): the same two builds in process.
    p_hf = Sa2VAPredictor.from_hf(hf, max_tiles=MAX_TILES)
    p_cfg = Sa2VAPredictor.from_config(TINY_MODEL_CFG, ckpt, seed=0, max_tiles=MAX_TILES)
    for name in NAMES:
        with Image.open(IMAGES / name) as im:
            arr = np.asarray(im.convert("RGB"))
        (a,), (b,) = p_hf.predict([arr], PROMPT), p_cfg.predict([arr], PROMPT)
        assert a.text == b.text
        assert len(a.probs) == len(b.probs)
        for pa, pb in zip(a.probs, b.probs, strict=True):
            assert np.abs(np.asarray(pa, np.float64) - np.asarray(pb, np.float64)).max() <= 1e-5


@pytest.mark.slow
def test_upsampler_settings_and_weights_come_back(tmp_path: Path) -> None:
    up = {"model.grounding_encoder.upsampler": {"hidden": 8, "scale": 2}}
    src = Sa2VAPredictor.from_config(TINY_MODEL_CFG, seed=0, max_tiles=MAX_TILES, cfg_options=up)
    with torch.no_grad():  # weights no fresh build has
        for p in src.model.grounding_encoder.upsampler.parameters():
            p.add_(0.25)
    export_hf_folder(src.model, tmp_path / "hf")
    encoder = json.loads((tmp_path / "hf/config.json").read_text())[TOOLKIT_SECTION]["grounding_encoder"]
    assert encoder["upsampler"] == {"hidden": 8, "scale": 2}
    back = Sa2VAPredictor.from_hf(tmp_path / "hf", max_tiles=MAX_TILES)
    got = back.model.grounding_encoder.state_dict()
    want = src.model.grounding_encoder.state_dict()
    assert set(got) == set(want) and any(k.startswith("upsampler.") for k in got)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


MALFORMED = {
    "section not an object": ([1], "`sa2va_toolkit` must be a JSON object"),
    "unknown section field": ({"grounding_encoder": None, "vision": {}}, "unknown field(s) ['vision']"),
    "encoder not an object": ({"grounding_encoder": "tiny"}, "`sa2va_toolkit.grounding_encoder` must be"),
    "unknown encoder field": ("extra", "unknown field(s) ['multimask']"),
    "config_name not a yaml": ("name", "`sa2va_toolkit.grounding_encoder.config_name`"),
    "overrides a list": ("overrides", "`sa2va_toolkit.grounding_encoder.overrides` must be"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_section_is_refused(tiny_export, tmp_path: Path, case: str) -> None:
    _, hf = tiny_export
    folder = tmp_path / "hf"
    shutil.copytree(hf, folder)
    cfg = json.loads((folder / "config.json").read_text())
    edit, expected = MALFORMED[case]
    encoder = cfg[TOOLKIT_SECTION]["grounding_encoder"]
    if edit == "extra":
        encoder["multimask"] = False
    elif edit == "name":
        encoder["config_name"] = 7
    elif edit == "overrides":
        encoder["overrides"] = [encoder["overrides"]]
    else:
        cfg[TOOLKIT_SECTION] = edit
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFFolderError) as err:
        Sa2VAPredictor.from_hf(folder, max_tiles=MAX_TILES)
    assert str(folder / "config.json") in str(err.value)
    assert expected in str(err.value)


def test_official_grounding_encoder_writes_no_section() -> None:
    """The released SAM2 Hiera-L (built without initialisation: only its settings are read)."""
    from projects.sa2va.models.fast_init import no_weight_init
    from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder

    with no_weight_init():
        encoder = SAM2GroundingEncoder(torch_dtype="bfloat16")
    assert encoder.build_settings == OFFICIAL_GROUNDING_ENCODER
    assert grounding_encoder_section(SimpleNamespace(grounding_encoder=encoder)) is None


@pytest.mark.slow
def test_official_shape_export_config_is_unchanged(tmp_path: Path) -> None:
    """An export whose grounding encoder has the official settings writes exactly the official-schema
    config.json (the Sa2VA-1B-shaped fixture folder of tests/checkpoint as the source)."""
    from tests.checkpoint.hf_fixture import write_official_folder
    from tests.checkpoint.test_hf_sa2va import build

    src = write_official_folder(tmp_path / "src", "qwen2", seed=3)
    model, _ = build(src, "qwen2", seed=1)
    model.grounding_encoder.build_settings = dict(OFFICIAL_GROUNDING_ENCODER)  # official-shape settings
    export_hf_folder(model, tmp_path / "out")
    text = (tmp_path / "out/config.json").read_text()
    assert TOOLKIT_SECTION not in json.loads(text)
    source = json.loads((src / "config.json").read_text())
    assert text == json.dumps(official_config(model, source, model.mllm.build_dtype), indent=2) + "\n"


def test_training_tiling_is_read_from_the_config(tmp_path: Path) -> None:
    """Without building the processor, so the full config a run dumps in its work dir works too."""
    from projects.sa2va.engine.builder import load_config
    from projects.sa2va.engine.config_file import PACKAGE_CONFIGS, read_config
    from projects.sa2va.engine.export import training_tiling

    demo = {"min_dynamic_patch": 1, "max_dynamic_patch": 1, "use_thumbnail": True}
    assert training_tiling(load_config(TINY_MODEL_CFG)) == demo
    read_config(PACKAGE_CONFIGS / "sa2va_tiny_demo.py").dump(str(tmp_path / "dumped.py"))
    assert training_tiling(load_config(tmp_path / "dumped.py")) == demo
    leaf = PACKAGE_CONFIGS / "sa2va_finetune.py"
    assert training_tiling(load_config(leaf)) is None  # the source folder's tiling is kept
    six = load_config(leaf, {"train_dataloader.dataset.processor.max_tiles": 6})
    assert training_tiling(six) == {"max_dynamic_patch": 6}
    assert training_tiling(load_config(PACKAGE_CONFIGS / "sa2va_tiny_qwen3vl_demo.py")) is None
