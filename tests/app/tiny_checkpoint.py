"""A trainable-weights checkpoint of the tiny Sa2VA that answers ``Sure, [SEG].`` (shared by tests that
start tools as subprocesses: the demo app and the guide's commands).

The tiny model of ``_base_/model_tiny.py`` built with seed 0 (as ``Sa2VAPredictor.from_config`` and the
tools do) is overfit in-process on one bundled image, the way ``tests/inference/conftest.py`` does, and
its trainable tensors are saved as ``{"state_dict": ...}``: a tool that builds the same config with seed
0 and loads this file gets the same model. Built once per pytest session (cached under the session's
base temporary folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.inference.conftest import MAX_TILES, ONE_SEG, PROMPT, TINY_MODEL_CFG, _overfit, load_rgb

__all__ = ["MAX_TILES", "PROMPT", "TINY_MODEL_CFG", "TRAIN_IMAGE", "overfit_checkpoint"]

TRAIN_IMAGE = "Image_01L.jpg"


def overfit_checkpoint(base_dir: Path) -> Path:
    """Path of the checkpoint under ``base_dir`` (written on the first call, ~15 s on 2 cores)."""
    path = Path(base_dir) / "sa2va_tiny_overfit" / "iter_overfit.pth"
    if path.is_file():
        return path
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    predictor = Sa2VAPredictor.from_config(TINY_MODEL_CFG, seed=0, max_tiles=MAX_TILES)
    torch.manual_seed(0)
    loss = _overfit(predictor, [(load_rgb(TRAIN_IMAGE), PROMPT, ONE_SEG)], steps=50)
    assert loss < 0.1, f"overfitting the tiny model failed (LM loss {loss:.3f})"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": predictor.model.state_dict()}, tmp)
    tmp.rename(path)
    return path
