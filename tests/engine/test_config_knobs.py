"""A leaf that sets a base's top-level value without the field the base copied it into is refused.

``lr = 1e-4`` alone in a copy of a leaf would train at the base's learning rate (mmengine evaluates the
base first and copies its ``lr`` into ``optim_wrapper.optimizer.lr`` then); ``data_root = ...`` alone
would train on the base's folder. :func:`~projects.sa2va.engine.config_file.check_leaf_knobs` (run by
``read_config``, so by every tool) names the file, the line and both values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from projects.sa2va.engine.builder import load_config
from projects.sa2va.engine.config_file import KNOB_FIELDS, PACKAGE_CONFIGS, ConfigFileError, read_config

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
        read_config(leaf)
    text = str(err.value)
    assert text.startswith(f"{leaf}:{line}: ") and message in text
    name = body.strip().split(" = ")[0]
    assert f"Set `{KNOB_FIELDS[name]} = {name}` after it" in text


def test_a_knob_set_with_its_field_reads(tmp_path):
    cfg = read_config(
        _leaf(
            tmp_path,
            "lr = 1e-4\noptim_wrapper.optimizer.lr = lr\nmax_epochs = 3\ntrain_cfg.max_epochs = max_epochs\n",
        )
    )
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.train_cfg.max_epochs == 3
    # Setting only the field is fine; so are command-line options (applied after the file is read).
    assert (
        read_config(_leaf(tmp_path, "optim_wrapper.optimizer.lr = 1e-4\n")).optim_wrapper.optimizer.lr == 1e-4
    )
    cfg = load_config(PACKAGE_CONFIGS / "sa2va_tiny_demo.py", {"optim_wrapper.optimizer.lr": 1e-4})
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.lr == 1e-3


def test_data_root_alone_is_refused_and_with_the_paths_reads(tmp_path):
    with pytest.raises(ConfigFileError) as err:
        read_config(_leaf(tmp_path, 'data_root = "data/my_vessels"\n'))
    text = str(err.value)
    assert "mine.py:6: sets `data_root = 'data/my_vessels'`, but the training set reads" in text
    assert "'data/chase_db1/annotations_train.json' and 'data/chase_db1/images'" in text
    body = (
        'data_root = "data/my_vessels"\ntrain_dataloader.dataset.update(ann_file=data_root + "/train.json")\n'
    )
    assert (
        read_config(_leaf(tmp_path, body)).train_dataloader.dataset.ann_file == "data/my_vessels/train.json"
    )


def test_every_shipped_config_passes(tmp_path):
    for leaf in sorted(PACKAGE_CONFIGS.glob("*.py")):
        if leaf.name != "__init__.py":
            read_config(leaf)
            (tmp_path / leaf.stem).mkdir()
            shutil.copy(leaf, tmp_path / leaf.stem / leaf.name)  # and as a copy outside the package
            read_config(tmp_path / leaf.stem / leaf.name)
