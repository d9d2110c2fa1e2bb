"""Which Sa2VAProcessor ``Sa2VAPredictor.from_config`` takes from a config: the top-level ``processor``,
else the validation (test, training) dataset's; tiling overrides land in the InternVL image processor (or in
``from_pretrained``'s arguments); the SAM2 side defaults to the built model's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mmengine.config import Config

from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.inference.predictor import _processor_config

MODEL = SimpleNamespace(grounding_encoder=SimpleNamespace(image_size=256))
TINY = dict(type=Sa2VAProcessor, template="qwen_chat", image_processor=dict(max_tiles=1), sam2_size=128)


def loaders(**datasets) -> dict:
    return {f"{k}_dataloader": dict(dataset=dict(processor=v)) for k, v in datasets.items()}


def test_top_level_processor_first_then_val_test_train():
    top = dict(TINY, template="top")
    cfg = Config(dict(processor=top, **loaders(val=dict(TINY, template="val"))))
    assert _processor_config(cfg, None, {}, MODEL, "c.py")["template"] == "top"
    cfg = Config(loaders(train=dict(TINY, template="train"), val=dict(TINY, template="val")))
    assert _processor_config(cfg, None, {}, MODEL, "c.py")["template"] == "val"
    cfg = Config(loaders(train=dict(TINY, template="train"), test=dict(TINY, template="test")))
    assert _processor_config(cfg, None, {}, MODEL, "c.py")["template"] == "test"
    given = dict(TINY, template="given")
    assert _processor_config(cfg, given, {}, MODEL, "c.py")["template"] == "given"


def test_tiling_overrides_and_the_model_sam2_side():
    cfg = Config(dict(processor=TINY))
    out = _processor_config(cfg, None, dict(max_tiles=6, use_thumbnail=False), MODEL, "c.py")
    assert out["image_processor"] == dict(max_tiles=6, use_thumbnail=False) and out["sam2_size"] == 128
    assert cfg.processor.image_processor == dict(max_tiles=1)  # the config itself is left as it was
    hf = Config(dict(processor=dict(type=Sa2VAProcessor.from_pretrained, path="models/x")))
    out = _processor_config(hf, None, dict(max_tiles=2), MODEL, "c.py")
    assert out["max_tiles"] == 2 and out["sam2_size"] == 256  # from_pretrained's arguments; the model's SAM2


def test_a_config_without_a_processor_is_refused_by_name():
    with pytest.raises(ValueError, match=r"old\.py: no `processor`"):
        _processor_config(Config(loaders(val=None)), None, {}, MODEL, "old.py")
