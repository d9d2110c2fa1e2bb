"""Shared fixtures: the tiny random Sa2VA of ``_base_/model_tiny.py`` and the bundled CHASE_DB1 sample."""

from __future__ import annotations

import pytest

from tests.tiny import build_tiny_dataset, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_and_cfg():
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_dataset(tiny_model_and_cfg):
    return build_tiny_dataset(tiny_model_and_cfg[1])
