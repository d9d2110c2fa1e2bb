"""Every leaf config trains with the project's loop (exact mid-epoch resume, OOM message), none with
mmengine's ``IterBasedTrainLoop`` / ``EpochBasedTrainLoop`` directly."""

from __future__ import annotations

import pytest
from mmengine.config import Config

from projects.sa2va.engine.loops import Sa2VATrainLoop
from tests.tiny import ROOT

CONFIG_DIR = ROOT / "projects/sa2va/configs"
LEAVES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.name)
def test_leaf_uses_the_project_train_loop(path):
    assert Config.fromfile(str(path)).train_cfg.type is Sa2VATrainLoop, path.name
