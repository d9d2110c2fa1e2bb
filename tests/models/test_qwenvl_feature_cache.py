"""The frozen-feature cache with a Qwen-VL family: cached training equals uncached training, the cache
key covers the patch grid, and the cached vision tokens are split per sample by tokens, not patches."""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER

from projects.sa2va.configs import config_path
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.digests import sample_digests
from projects.sa2va.models.feature_cache import build_feature_cache


@pytest.fixture(scope="module", params=["sa2va_tiny_qwen3vl_demo", "sa2va_tiny_qwen2_5vl_demo"])
def model_and_samples(request):
    cfg = Config.fromfile(str(config_path(request.param)))
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    return model, [dataset[0], dataset[3]]


def _step(model, data):
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(**model.data_preprocessor(data, True), mode="loss")
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_cached_qwenvl_training_step_equals_uncached(model_and_samples):
    model, samples = model_and_samples
    data = sa2va_collate(samples, digests=True)
    assert data["data"].image_grid_thw.shape == (2, 3)
    model.feature_cache = None
    model.data_preprocessor.keep_pixels_on_host = False
    ref_losses, ref_grads = _step(model, data)
    model.feature_cache = build_feature_cache(dict(mode="memory"))
    model.data_preprocessor.keep_pixels_on_host = True
    try:
        for expected_misses in (4, 4):  # the first step fills 2 vision + 2 SAM2 entries, the second hits
            losses, grads = _step(model, data)
            assert model.feature_cache.misses == expected_misses
            for k in ref_losses:
                assert torch.equal(losses[k], ref_losses[k]), k
            assert grads.keys() == ref_grads.keys()
            for n in grads:
                assert torch.equal(grads[n], ref_grads[n]), n
    finally:
        model.feature_cache = None
        model.data_preprocessor.keep_pixels_on_host = False


def test_the_vision_cache_key_covers_the_patch_grid():
    patches = torch.zeros(16, 8)  # the same (constant) patch rows under two grids
    g = torch.zeros(2, 3, 4, 4)
    a = sample_digests(torch.cat([patches, patches]), [16, 16], g, torch.tensor([[1, 4, 4], [1, 2, 8]]))
    assert a[0][0] != a[1][0]
    assert a[0][1] == a[1][1]
