"""The prediction's upsampling mode is the model's own ``output_resolution`` (defaulting to the mask loss's
``resolution``, so existing configs predict as before), not read from the loss at prediction time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projects.sa2va.models.losses import MaskLoss
from tests.tiny import build_tiny_model


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0)[0]


def _low_then_size(logits: torch.Tensor, s: int, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(logits[:, None].float(), size=(s, s), mode="bilinear", align_corners=False)
    return F.interpolate(up, size=size, mode="bilinear", align_corners=False)[:, 0].sigmoid()


def _straight(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ].sigmoid()


def test_output_resolution_defaults_to_the_loss_mode_and_is_used_by_logits_to_probs(model):
    assert model.loss_mask.resolution == "low" and model.output_resolution == "low"
    s = model.grounding_encoder.image_size
    torch.manual_seed(1)
    logits = torch.randn(2, 16, 16) * 4
    size = (37, 53)
    low = model.logits_to_probs(logits, size)
    torch.testing.assert_close(low, _low_then_size(logits, s, size), rtol=0, atol=1e-6)
    try:
        model.output_resolution = "full"
        full = model.logits_to_probs(logits, size)
        torch.testing.assert_close(full, _straight(logits, size), rtol=0, atol=1e-6)
        assert not torch.allclose(full, low, atol=1e-4)  # the two modes differ on these logits
        model.loss_mask.resolution = "full"  # the loss setting no longer decides the prediction
        model.output_resolution = "low"
        torch.testing.assert_close(model.logits_to_probs(logits, size), low, rtol=0, atol=0)
    finally:
        model.output_resolution = "low"
        model.loss_mask.resolution = "low"


def test_output_resolution_follows_a_full_loss_unless_set():
    full_loss = dict(type=MaskLoss, resolution="full")
    assert build_tiny_model(loss_mask=full_loss)[0].output_resolution == "full"
    assert build_tiny_model(loss_mask=full_loss, output_resolution="low")[0].output_resolution == "low"
    with pytest.raises(ValueError, match="output_resolution must be one of"):
        build_tiny_model(output_resolution="half")
