"""A config names the model's Hugging Face folder once, in the top-level ``path``.

The config loader (:func:`projects.sa2va.engine.builder.load_config`, used by train, test, predict, export
and the demo) writes it into every field of ``MODEL_FOLDER_FIELDS``; ``--cfg-options path=...`` therefore
re-points the tokenizer, the processors, the MLLM and the weight loader at once.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from mmengine.config import Config

from projects.sa2va.cli import parse_cfg_options
from projects.sa2va.engine.builder import load_config
from projects.sa2va.engine.config_file import (
    MODEL_FOLDER_FIELDS,
    PACKAGE_CONFIGS,
    ConfigFileError,
    apply_model_path,
)

HF_LEAVES = [
    "sa2va_finetune.py",
    "sa2va_8b_finetune.py",
    "sa2va_qwen3vl_4b_finetune.py",
    "sa2va_qwen2_5vl_3b_finetune.py",
]
#: The fields every HF leaf has (the test dataloader's is the one of MODEL_FOLDER_FIELDS it has not).
HF_FIELDS = {
    "tokenizer.path",
    "processor.path",
    "dataset_inputs.processor.path",
    "model.mllm.path",
    "model.mllm.tokenizer.path",
    "model.load_weights.path",
    "train_dataloader.dataset.processor.path",
    "val_dataloader.dataset.processor.path",
}


def _get(cfg: Config, field: str) -> Any:
    node: Any = cfg
    for name in field.split("."):
        node = node[name]
    return node


def _strings(node: Any, where: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value)`` of every string anywhere in a config tree."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{where}.{k}" if where else str(k))]
    if isinstance(node, (list, tuple)):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{where}[{i}]")]
    return [(where, node)] if isinstance(node, str) else []


@pytest.mark.parametrize("leaf", HF_LEAVES)
def test_leaf_names_path_once(leaf):
    text = (PACKAGE_CONFIGS / leaf).read_text()
    assert text.count("path = ") == 1 and ".path" not in text and "path=path" not in text


@pytest.mark.parametrize("leaf", HF_LEAVES)
def test_cfg_options_path_reaches_every_field(leaf):
    default = Config.fromfile(str(PACKAGE_CONFIGS / leaf)).path
    # As a command line gives it: `--cfg-options path=/data/models/Sa2VA-X`.
    cfg = load_config(PACKAGE_CONFIGS / leaf, parse_cfg_options(["path=/data/models/Sa2VA-X"]))
    assert cfg.path == "/data/models/Sa2VA-X"
    present = {f for f in MODEL_FOLDER_FIELDS if _present(cfg, f)}
    assert present == HF_FIELDS
    assert {f: _get(cfg, f) for f in present} == dict.fromkeys(HF_FIELDS, "/data/models/Sa2VA-X")
    # Nowhere in the config does the leaf's own folder survive.
    assert [kv for kv in _strings(cfg.to_dict()) if kv[1] == default] == []
    # Without the option every field holds the leaf's `path`.
    plain = load_config(PACKAGE_CONFIGS / leaf)
    assert {f: _get(plain, f) for f in HF_FIELDS} == dict.fromkeys(HF_FIELDS, default)


def _present(cfg: Config, field: str) -> bool:
    try:
        _get(cfg, field)
    except (KeyError, TypeError):
        return False
    return True


def test_path_reaches_the_validation_and_test_processors():
    cfg = load_config(
        PACKAGE_CONFIGS / "sa2va_finetune.py",
        {
            "path": "/m/A",
            "val_dataloader": dict(dataset=dict(processor=dict(type="x"))),
            "test_dataloader": dict(dataset=dict(processor=dict(type="x", path="/m/A"))),
        },
    )
    assert cfg.val_dataloader.dataset.processor.path == cfg.test_dataloader.dataset.processor.path == "/m/A"


def test_a_conflicting_nested_folder_is_refused():
    with pytest.raises(ConfigFileError) as e:
        load_config(PACKAGE_CONFIGS / "sa2va_finetune.py", {"model.load_weights.path": "/other"})
    message = str(e.value)
    assert "sa2va_finetune.py" in message
    assert "path = 'models/Sa2VA-1B'" in message and "model.load_weights.path = '/other'" in message


def test_an_old_style_copy_that_repeats_path_still_loads(tmp_path: Path):
    """A copied leaf that also re-points the nested fields to the same folder is accepted; changing only
    the top-level `path` of such a copy on the command line is refused (it would be ambiguous)."""
    leaf = tmp_path / "my_finetune.py"
    shutil.copy(PACKAGE_CONFIGS / "sa2va_finetune.py", leaf)
    leaf.write_text(
        leaf.read_text().replace(
            'path = "models/Sa2VA-1B"\n',
            'path = "models/Sa2VA-4B"\ntokenizer.path = path\n'
            "model.mllm.update(path=path, tokenizer=tokenizer)\nmodel.load_weights.path = path\n",
        )
    )
    cfg = load_config(leaf)
    assert {_get(cfg, f) for f in HF_FIELDS} == {"models/Sa2VA-4B"}
    with pytest.raises(ConfigFileError, match=re.escape("model.mllm.path = 'models/Sa2VA-4B'")):
        load_config(leaf, {"path": "/elsewhere"})


def test_configs_without_a_folder_are_unchanged():
    plain = Config.fromfile(str(PACKAGE_CONFIGS / "sa2va_tiny_demo.py"))
    loaded = load_config(PACKAGE_CONFIGS / "sa2va_tiny_demo.py")
    assert "path" not in loaded
    assert loaded.to_dict() == plain.to_dict()
    assert apply_model_path(Config(dict(path=None, tokenizer=dict(type="t")))) == []
