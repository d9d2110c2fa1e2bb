"""Damaged Hugging Face folders: every error names the file and what is wrong with it.

Fixtures are real files of the tiny official-layout folder (``hf_fixture.write_official_folder``: real
safetensors shards, index and ``config.json``), copied and then damaged byte by byte: a corrupt
safetensors header, a truncated shard, a shard cut inside its header, a cut index, invalid / incomplete
``config.json``; plus a damaged adapter export."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from transformers import Qwen3VLConfig
from xtuner.registry import BUILDER

from projects.sa2va.checkpoint.hf_sa2va import export_adapter, load_adapter_export, load_hf_sa2va_weights
from projects.sa2va.hf_folder import HFFolderError, read_hf_config
from projects.sa2va.inference.predictor import Sa2VAPredictor
from projects.sa2va.models import internvl
from tests.checkpoint.hf_fixture import model_cfg, write_official_folder

FAMILY = "qwen2"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_official_folder(tmp_path_factory.mktemp("hf") / "sa2va", FAMILY, seed=3)


@pytest.fixture(scope="module")
def model(source):
    """The tiny model without LoRA (plain names, as at load time)."""
    cfg = model_cfg(source, FAMILY)
    cfg.model.update(trainable=dict(llm="frozen"))
    torch.manual_seed(0)
    return BUILDER.build(cfg.model)


def copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def header_length(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_an_intact_copy_loads(source, model, tmp_path) -> None:
    folder = copy(source, tmp_path / "ok")
    assert load_hf_sa2va_weights(model, folder).loaded > 0


def test_corrupt_safetensors_header_names_the_shard(source, model, tmp_path) -> None:
    folder = copy(source, tmp_path / "bad_header")
    shard = folder / SHARD1
    data = bytearray(shard.read_bytes())
    data[8:10] = b"{{"  # the header's JSON now starts with '{{'
    shard.write_bytes(bytes(data))
    with pytest.raises(HFFolderError) as info:
        load_hf_sa2va_weights(model, folder)
    msg = str(info.value)
    assert msg.startswith(f"{shard}: not a readable safetensors file")
    assert f"the {header_length(shard)}-byte header is not valid JSON" in msg


def test_truncated_shard_names_the_shard_and_the_missing_bytes(source, model, tmp_path) -> None:
    folder = copy(source, tmp_path / "cut")
    shard = folder / SHARD2
    full = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(HFFolderError) as info:
        load_hf_sa2va_weights(model, folder)
    msg = str(info.value)
    assert msg.startswith(f"{shard}: not a readable safetensors file: cut short")
    assert f"ending at byte {full}, the file has {full - 1000} bytes (1000 missing)" in msg


def test_shard_cut_inside_its_header(source, model, tmp_path) -> None:
    folder = copy(source, tmp_path / "cut_header")
    shard = folder / SHARD1
    n = header_length(shard)
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(
        HFFolderError, match=rf"{SHARD1}: .*header length field says {n} bytes but the file holds 40"
    ):
        load_hf_sa2va_weights(model, folder)
    shard.write_bytes(b"\x01\x02")
    with pytest.raises(HFFolderError, match=rf"{SHARD1}: .*2 bytes: too short for a safetensors file"):
        load_hf_sa2va_weights(model, folder)


def test_cut_or_wrong_index_names_the_index(source, model, tmp_path) -> None:
    folder = copy(source, tmp_path / "index")
    index = folder / "model.safetensors.index.json"
    text = index.read_text()
    index.write_text(text[: len(text) // 2])
    with pytest.raises(HFFolderError) as info:
        load_hf_sa2va_weights(model, folder)
    assert str(info.value).startswith(f"{index}: invalid JSON at line ") and "cut short?" in str(info.value)
    index.write_text(json.dumps({"metadata": {}, "weight_map": ["not", "an", "object"]}))
    with pytest.raises(HFFolderError, match=r"index\.json: `weight_map` must be an object .* found list"):
        load_hf_sa2va_weights(model, folder)


def _edit_config(folder: Path, edit) -> Path:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg, indent=2))
    return path


def test_invalid_config_json_names_the_file_line_and_column(source, tmp_path) -> None:
    folder = copy(source, tmp_path / "bad_json")
    path = folder / "config.json"
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.endswith(","))
    lines[k] = lines[k].removesuffix(",")  # a missing comma: the error is on the next line
    path.write_text("\n".join(lines))
    expected = rf"{path}: invalid JSON at line {k + 2} column \d+: Expecting ',' delimiter"
    with pytest.raises(HFFolderError, match=expected):
        internvl.read_hf_config(folder)  # what the InternVL and Qwen-VL adapters call
    with pytest.raises(HFFolderError, match=expected):
        BUILDER.build(model_cfg(folder, FAMILY).model)  # building the model from the folder
    with pytest.raises(HFFolderError, match=expected):
        Sa2VAPredictor.from_hf(folder)
    path.write_text("[1, 2]")
    with pytest.raises(HFFolderError, match=rf"{path}: expected a JSON object .*found a list"):
        read_hf_config(folder)


def test_missing_or_wrong_config_fields_are_named(source, tmp_path) -> None:
    folder = copy(source, tmp_path / "fields")
    path = _edit_config(folder, lambda c: c["llm_config"].pop("hidden_size"))
    with pytest.raises(HFFolderError, match=rf"{path}: `llm_config` lacks `llm_config\.hidden_size`"):
        BUILDER.build(model_cfg(folder, FAMILY).model)
    _edit_config(folder, lambda c: c["llm_config"].update(hidden_size="64"))
    with pytest.raises(
        HFFolderError, match=r"`llm_config\.hidden_size` must be a positive integer, found '64'"
    ):
        read_hf_config(folder)
    _edit_config(folder, lambda c: c["llm_config"].update(hidden_size=64, num_hidden_layers=0))
    with pytest.raises(
        HFFolderError, match=r"`llm_config\.num_hidden_layers` must be a positive integer, found 0"
    ):
        read_hf_config(folder)
    _edit_config(folder, lambda c: (c["llm_config"].update(num_hidden_layers=2), c.pop("vision_config")))
    with pytest.raises(HFFolderError, match=rf"{path}: `vision_config` must be an object, found NoneType"):
        read_hf_config(folder)
    path.write_text(json.dumps({"model_type": "sa2va_chat"}))
    with pytest.raises(HFFolderError, match=rf"{path}: neither an InternVL-layout config"):
        read_hf_config(folder)


def test_qwen_vl_config_fields_are_checked(tmp_path) -> None:
    cfg = Qwen3VLConfig().to_dict()  # the Qwen-VL layout as transformers writes it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert read_hf_config(tmp_path)["text_config"]["hidden_size"] == cfg["text_config"]["hidden_size"]
    del cfg["text_config"]["num_hidden_layers"], cfg["vision_config"]["depth"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(HFFolderError, match=rf"{path}: `text_config` lacks `text_config\.num_hidden_layers`"):
        read_hf_config(tmp_path)


def test_damaged_adapter_export_names_the_file(source, tmp_path) -> None:
    cfg = model_cfg(source, FAMILY)
    torch.manual_seed(0)
    lora_model = BUILDER.build(cfg.model)
    out = tmp_path / "adapter"
    export_adapter(lora_model, out)
    trained = out / "sa2va_trained.safetensors"
    trained.write_bytes(trained.read_bytes()[:-8])
    cfg.model.update(trainable=dict(llm="frozen"))
    base = BUILDER.build(cfg.model)
    with pytest.raises(
        HFFolderError, match=rf"{trained}: not a readable safetensors file: cut short.*8 missing"
    ):
        load_adapter_export(base, out)
    (out / "adapter_config.json").write_text("{")
    with pytest.raises(HFFolderError, match=r"adapter_config\.json: invalid JSON at line 1"):
        load_adapter_export(base, out)
