"""Frozen-feature cache: cached training equals uncached training; keys change with weights and inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.digests import tensor_digest
from projects.sa2va.models.feature_cache import (
    DiskStore,
    FrozenFeatureCache,
    MemoryStore,
    build_feature_cache,
    module_fingerprint,
)
from tests.tiny import build_tiny_dataset, build_tiny_model, tiny_processor


@pytest.fixture(scope="module")
def model_and_data():
    model, cfg = build_tiny_model(seed=3)
    ds = build_tiny_dataset(cfg)
    samples = [ds[0], ds[1]]
    return model, cfg, samples


def loss_and_grads(model, data) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode="loss")
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def set_cache(model, cfg: dict | None) -> FrozenFeatureCache | None:
    model.feature_cache = build_feature_cache(cfg)
    model.data_preprocessor.keep_pixels_on_host = model.feature_cache is not None
    return model.feature_cache


def test_cached_training_step_equals_uncached(model_and_data):
    model, _, samples = model_and_data
    data = sa2va_collate(samples, digests=True)
    try:
        set_cache(model, None)
        ref_losses, ref_grads = loss_and_grads(model, data)
        cache = set_cache(model, dict(mode="memory"))
        for expected_misses in (4, 4):  # 1st call fills (2 ViT + 2 SAM2 entries), 2nd only hits
            losses, grads = loss_and_grads(model, data)
            assert cache.misses == expected_misses
            for k in ref_losses:
                assert torch.equal(losses[k], ref_losses[k]), k
            assert grads.keys() == ref_grads.keys()
            for n in ref_grads:
                assert torch.equal(grads[n], ref_grads[n]), n
        assert cache.hits == 4
        # bf16 storage of fp32 features: relative feature error <= 2^-8; losses within 1e-2 relative.
        set_cache(model, dict(mode="memory", dtype="bfloat16"))
        bf_losses, _ = loss_and_grads(model, data)
        bf_losses2, _ = loss_and_grads(model, data)
        for k in ref_losses:
            torch.testing.assert_close(bf_losses[k], ref_losses[k], rtol=1e-2, atol=1e-3)
            assert torch.equal(bf_losses[k], bf_losses2[k]), "miss and hit must give identical values"
    finally:
        set_cache(model, None)


def test_weights_change_invalidates(model_and_data):
    model, _, samples = model_and_data
    data = sa2va_collate(samples, digests=True)
    try:
        cache = set_cache(model, dict(mode="memory"))
        batch = model.data_preprocessor(data, True)["data"]
        vit1, feats1 = model.encode_images(batch)
        assert cache.misses == 4
        model.encode_images(batch)
        assert cache.misses == 4
        vit_param = next(model.mllm.vision_model.parameters())
        sam_name, sam_param = next(iter(model.grounding_encoder.sam2_model.image_encoder.named_parameters()))
        with torch.no_grad():
            vit_param.add_(0.5)  # an in-place change (as load_state_dict makes)
        vit2, _ = model.encode_images(batch)
        assert cache.misses == 6  # only the ViT entries were recomputed
        assert not torch.equal(vit1, vit2)
        model.feature_cache = None
        vit_ref, _ = model.encode_images(batch)
        assert torch.equal(vit2, vit_ref)
        model.feature_cache = cache
        encoder = model.grounding_encoder.sam2_model.image_encoder
        state = encoder.state_dict()
        state[sam_name] = sam_param.detach() + 0.25
        encoder.load_state_dict(state)  # loading a checkpoint invalidates the SAM2 entries
        _, feats2 = model.encode_images(batch)
        assert cache.misses == 8
        assert not torch.equal(feats1.fpn[0], feats2.fpn[0])
    finally:
        with torch.no_grad():
            vit_param.sub_(0.5)
            sam_param.sub_(0.25)
        set_cache(model, None)


def test_image_content_and_preprocessing_change_the_keys(model_and_data):
    model, cfg, _ = model_and_data
    # The SAM2 resize method is part of the key; bilinear values are not integers, so float32 pixels.
    base = build_tiny_dataset(cfg, pixel_format="float32")[0]
    bilinear = build_tiny_dataset(
        cfg, processor=tiny_processor(cfg, sam2_resample="bilinear"), pixel_format="float32"
    )[0]
    assert bilinear["input_ids"].tolist() == base["input_ids"].tolist()
    assert tensor_digest(bilinear["pixel_values"]) == tensor_digest(base["pixel_values"])
    assert tensor_digest(bilinear["g_pixel_values"]) != tensor_digest(base["g_pixel_values"])
    edited = dict(base)
    edited["pixel_values"] = base["pixel_values"].clone()
    edited["pixel_values"][0, 0, 0, 0] += 1e-3  # one pixel of the image content
    try:
        cache = set_cache(model, dict(mode="memory"))
        for s in (base, bilinear, edited):
            model.encode_images(model.data_preprocessor(sa2va_collate([s], digests=True), True)["data"])
        # sample 0: ViT + SAM2 miss; bilinear: only SAM2 misses; edited pixel: only ViT misses.
        assert cache.misses == 4 and cache.hits == 2
        # Without collate digests the cache hashes the batch itself: same keys, all hits.
        model.encode_images(model.data_preprocessor(sa2va_collate([bilinear]), True)["data"])
        assert cache.misses == 4 and cache.hits == 4
    finally:
        set_cache(model, None)


def test_uint8_and_float32_pixels_give_the_same_features_under_their_own_keys(model_and_data):
    model, cfg, samples = model_and_data
    base = build_tiny_dataset(cfg, pixel_format="float32")[0]
    assert samples[0]["pixel_values"].dtype == torch.uint8
    try:
        cache = set_cache(model, dict(mode="memory"))
        runs = [
            model.encode_images(model.data_preprocessor(sa2va_collate([s], digests=True), True)["data"])
            for s in (samples[0], base)
        ]
        assert cache.misses == 4 and cache.hits == 0  # the pixel format is part of the key
        assert torch.equal(runs[0][0], runs[1][0])
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1].fpn, runs[1][1].fpn))
    finally:
        set_cache(model, None)


def test_disk_cache_round_trip_and_atomic_writes(model_and_data, tmp_path, monkeypatch):
    model, _, samples = model_and_data
    data = sa2va_collate(samples, digests=True)
    try:
        set_cache(model, dict(mode="disk", dir=str(tmp_path), max_bytes=0))
        batch = model.data_preprocessor(data, True)["data"]
        vit1, feats1 = model.encode_images(batch)
        files = sorted(tmp_path.rglob("*.safetensors"))
        assert len(files) == 4 and not list(tmp_path.rglob("*.tmp"))
        # A fresh cache object (another run or rank) reads the same files: all hits, same bf16 values.
        cache2 = set_cache(model, dict(mode="disk", dir=str(tmp_path), max_bytes=0))
        vit2, feats2 = model.encode_images(batch)
        assert cache2.hits == 4 and cache2.misses == 0
        assert vit2.dtype == torch.bfloat16 and torch.equal(vit1, vit2)
        for a, b in zip(feats1.fpn, feats2.fpn):
            assert torch.equal(a, b)
        model.feature_cache = None
        _, exact = model.encode_images(batch)
        torch.testing.assert_close(feats2.fpn[0].float(), exact.fpn[0], rtol=2**-8, atol=1e-6)
        # A truncated file (crashed writer without atomic rename) is a miss and gets rewritten.
        files[0].write_bytes(files[0].read_bytes()[:50])
        cache3 = set_cache(model, dict(mode="disk", dir=str(tmp_path), max_bytes=0))
        model.encode_images(batch)
        assert cache3.misses == 1 and cache3.hits == 3
    finally:
        set_cache(model, None)

    store = DiskStore(tmp_path / "atomic")
    t = [torch.arange(6.0).reshape(2, 3)]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        store.put("ab" * 20, t)
    monkeypatch.undo()
    assert store.get("ab" * 20) is None
    assert not [p for p in Path(tmp_path / "atomic").rglob("*") if p.is_file()]
    store.put("ab" * 20, t)
    tensors, meta = store.get("ab" * 20)
    assert torch.equal(tensors[0], t[0]) and meta == {}


def test_memory_store_is_bounded_by_bytes():
    store = MemoryStore(max_bytes=3 * 400)
    for i in range(5):
        store.put(f"k{i}", [torch.zeros(100)])  # 400 bytes each
        store.get("k0")  # keep k0 recently used
    assert store.bytes == 1200 and len(store) == 3
    assert "k0" in store and "k4" in store and "k1" not in store
    store.put("huge", [torch.zeros(1000)])  # larger than the capacity: not stored
    assert "huge" not in store


def test_config_switch():
    assert build_feature_cache(None) is None
    assert build_feature_cache(dict(mode="off")) is None
    assert isinstance(build_feature_cache(dict(mode="memory", max_bytes=10)), FrozenFeatureCache)
    with pytest.raises(ValueError, match="needs `dir`"):
        build_feature_cache(dict(mode="disk"))
    with pytest.raises(ValueError, match="mode"):
        build_feature_cache(dict(mode="gpu"))
    with pytest.raises(ValueError, match="frozen vision_model"):
        build_tiny_model(trainable=dict(vision_model="full"), feature_cache=dict(mode="memory"))


def test_sync_free_seg_positions_match_the_counting_path(model_and_data):
    model, _, samples = model_and_data
    batch = sa2va_collate(samples)["data"]
    host = model.data_preprocessor({"data": batch}, True)["data"]
    assert host.seg_counts == [m.shape[0] for m in batch.masks]
    pos_a, counts_a = model.seg_positions(batch.input_ids, host.seg_counts)
    pos_b, counts_b = model.seg_positions(batch.input_ids)
    assert counts_a == counts_b and torch.equal(pos_a, pos_b)
    bad = sa2va_collate(samples)["data"]
    bad.masks = [bad.masks[0][:4], bad.masks[1]]
    with pytest.raises(ValueError, match="5 \\[SEG\\] tokens in the sequence but 4 masks"):
        model.data_preprocessor({"data": bad}, True)


def test_pinned_fingerprints_survive_partitioned_placeholders(model_and_data):
    """Under ZeRO-3 the encoders' parameters become empty per-rank placeholders after the runner built the
    model: fingerprints pinned before keep naming the real weights (a disk cache must not match others)."""
    model, _, _ = model_and_data
    vit = model.mllm.vision_model
    cache = set_cache(model, dict(mode="memory"))
    try:
        real = module_fingerprint(vit)
        cache.pin_fingerprints(model.frozen_encoders())
        saved = {n: p.data for n, p in vit.named_parameters()}
        try:
            for p in vit.parameters():  # what ZeRO-3 leaves in a partitioned parameter
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            assert module_fingerprint(vit) != real
            assert cache._fp_vit.get(vit) == real
        finally:
            for n, p in vit.named_parameters():
                p.data = saved[n]
        unpinned = set_cache(model, dict(mode="memory"))
        assert unpinned._fp_vit.get(vit) == real and not unpinned._fp_vit.pinned
    finally:
        set_cache(model, None)
