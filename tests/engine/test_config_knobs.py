"""A leaf that sets a base's top-level value without the field the base copied it into is refused.

``lr = 1e-4`` alone in a copy of a leaf would train at the base's learning rate (mmengine evaluates the
base first and copies its ``lr`` into ``optim_wrapper.optimizer.lr`` then); ``data_root = ...`` alone
would train on the base's folder. :func:`~projects.sa2va.engine.config_checks.check_leaf_knobs` (run by
``load_config``, so by every tool) names the file, the line and both values. ``--cfg-options lr=...`` (a
top-level variable, set after the file was read) is refused by ``check_cfg_options``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from projects.sa2va.cli import parse_cfg_options
from projects.sa2va.engine.builder import load_config
from projects.sa2va.engine.config_checks import KNOB_FIELDS
from projects.sa2va.engine.config_file import PACKAGE_CONFIGS, ConfigFileError, read_config

ROOT = Path(__file__).resolve().parents[2]
HEADER = "from mmengine.config import read_base\n\nwith read_base():\n    from .sa2va_tiny_demo import *\n\n"


def _leaf(tmp_path: Path, body: str) -> Path:
    leaf = tmp_path / "mine.py"
    leaf.write_text(HEADER + body)
    return leaf


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("lr = 1e-4\n", 6, "sets `lr = 0.0001`, but `optim_wrapper.optimizer.lr` is 0.001"),
        ("weight_decay = 0.1\n", 6, "`optim_wrapper.optimizer.weight_decay` is 0.05"),
        ("\nmax_epochs = 3\n", 7, "sets `max_epochs = 3`, but `train_cfg.max_epochs` is 10"),
        ("accumulative_counts = 4\n", 6, "`optim_wrapper.accumulative_counts` is 1"),
        ("batch_size = 8\n", 6, "`train_dataloader.batch_size` is 2"),
        ("val_interval = 10\n", 6, "`train_cfg.val_interval` is 50"),
    ],
)
def test_a_knob_set_alone_is_refused(tmp_path, body, line, message):
    leaf = _leaf(tmp_path, body)
    with pytest.raises(ConfigFileError) as err:
        load_config(leaf)
    text = str(err.value)
    assert text.startswith(f"{leaf}:{line}: ") and message in text
    name = body.strip().split(" = ")[0]
    assert f"Set `{KNOB_FIELDS[name]} = {name}` after it" in text


def test_a_knob_set_with_its_field_reads(tmp_path):
    cfg = load_config(
        _leaf(
            tmp_path,
            "lr = 1e-4\noptim_wrapper.optimizer.lr = lr\nmax_epochs = 3\ntrain_cfg.max_epochs = max_epochs\n",
        )
    )
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.train_cfg.max_epochs == 3
    # Setting only the field is fine; so are command-line options (applied after the file is read).
    assert (
        load_config(_leaf(tmp_path, "optim_wrapper.optimizer.lr = 1e-4\n")).optim_wrapper.optimizer.lr == 1e-4
    )
    cfg = load_config(PACKAGE_CONFIGS / "sa2va_tiny_demo.py", {"optim_wrapper.optimizer.lr": 1e-4})
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.lr == 1e-3


def test_data_root_alone_is_refused_and_with_the_paths_reads(tmp_path):
    with pytest.raises(ConfigFileError) as err:
        load_config(_leaf(tmp_path, 'data_root = "data/my_vessels"\n'))
    text = str(err.value)
    assert "mine.py:6: sets `data_root = 'data/my_vessels'`, but the training set reads" in text
    assert "'data/chase_db1/annotations_train.json' and 'data/chase_db1/images'" in text
    body = (
        'data_root = "data/my_vessels"\ntrain_dataloader.dataset.update(ann_file=data_root + "/train.json")\n'
    )
    assert (
        load_config(_leaf(tmp_path, body)).train_dataloader.dataset.ann_file == "data/my_vessels/train.json"
    )


def test_every_shipped_config_passes(tmp_path):
    for leaf in sorted(PACKAGE_CONFIGS.glob("*.py")):
        if leaf.name != "__init__.py":
            load_config(leaf)
            (tmp_path / leaf.stem).mkdir()
            shutil.copy(leaf, tmp_path / leaf.stem / leaf.name)  # and as a copy outside the package
            load_config(tmp_path / leaf.stem / leaf.name)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("lr=1e-05", "`lr` is a variable of .*sa2va_finetune.py, .*set `optim_wrapper.optimizer.lr` instead"),
        ("max_epochs=3", "set `train_cfg.max_epochs` instead"),
        ("data_root=data/x", r"set `train_dataloader.dataset.ann_file / image_root"),
        ("train_ann_file=data/x/train.json", "set `train_dataloader.dataset.ann_file` instead"),
        ("val_ann_file=None", "set `val_dataloader.dataset.ann_file` instead"),
        ("pretrained_pth=w.pth", "set `model.pretrained_pth` instead"),
        ("max_epoch=3", "has no top-level `max_epoch` and no run reads it"),
    ],
)
def test_cfg_options_that_would_change_nothing_are_refused(option, message):
    with pytest.raises(ConfigFileError, match=message):
        load_config(PACKAGE_CONFIGS / "sa2va_finetune.py", parse_cfg_options([option]))


def test_cfg_options_of_fields_and_runner_keys_apply():
    opts = ["path=/m", "work_dir=/tmp/w", "train_cfg.max_epochs=3", "optim_wrapper.optimizer.lr=1e-05"]
    cfg = load_config(PACKAGE_CONFIGS / "sa2va_finetune.py", parse_cfg_options(opts))
    assert (cfg.model.mllm.path, cfg.work_dir, cfg.train_cfg.max_epochs) == ("/m", "/tmp/w", 3)
    assert cfg.optim_wrapper.optimizer.lr == 1e-5


def test_the_config_a_run_dumps_in_its_work_dir_reads(tmp_path):
    """mmengine dumps the whole config (every value a top-level assignment, no ``read_base``) into the work
    dir; test, predict and export read that file: all its values are its own, nothing is refused."""
    dumped = tmp_path / "sa2va_tiny_demo.py"
    read_config(PACKAGE_CONFIGS / "sa2va_tiny_demo.py").dump(str(dumped))
    text = dumped.read_text()
    assert "read_base" not in text and "accumulative_counts = 16" in text
    cfg = load_config(dumped)
    assert cfg.optim_wrapper.accumulative_counts == 1 and cfg.accumulative_counts == 16
