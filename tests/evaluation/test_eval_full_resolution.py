"""Full-resolution masks: what MaskLoss compares per mode, the learned upsampler, predict outputs + metric."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.evaluation.metrics import dice
from projects.sa2va.evaluation.seg_metric import SegMetric
from projects.sa2va.models import losses as losses_mod
from projects.sa2va.models.losses import MaskLoss
from projects.sa2va.models.upsampler import MaskUpsampler
from tests.tiny import TINY_MODEL_CFG, build_tiny_dataset, build_tiny_model


@pytest.mark.parametrize(("resolution", "expect"), [("low", (8, 8)), ("full", (32, 40))])
def test_mask_loss_compares_at_the_chosen_resolution(monkeypatch, resolution, expect):
    seen = []

    def spy(logits, targets):
        seen.append((tuple(logits.shape), tuple(targets.shape), targets.unique().tolist()))
        return losses_mod.per_mask_dice(logits, targets) * 0

    monkeypatch.setattr(losses_mod, "per_mask_bce", spy)
    logits = torch.randn(3, 8, 8)
    targets = [torch.zeros(2, 32, 40, dtype=torch.uint8), torch.ones(1, 32, 40, dtype=torch.uint8)]
    targets[0][:, 3, :] = 1  # a 1-px line: kept at full resolution, may vanish or survive nearest-resizing
    MaskLoss(resolution=resolution)(logits, targets, [2, 1])
    assert [s[0] for s in seen] == [(2, *expect), (1, *expect)]
    assert [s[1] for s in seen] == [(2, *expect), (1, *expect)]
    if resolution == "full":  # full: logits bilinearly upsampled, targets untouched
        assert seen[0][2] == [0.0, 1.0]


def test_full_mode_loss_equals_the_loss_on_upsampled_logits():
    logits = torch.randn(1, 8, 8)
    target = (torch.rand(1, 32, 32) > 0.7).to(torch.uint8)
    got = MaskLoss(resolution="full", bce_weight=1.0, dice_weight=0.0)(logits, [target], [1])["loss_mask"]
    up = F.interpolate(logits[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert got == pytest.approx(float(F.binary_cross_entropy_with_logits(up, target.float())), rel=1e-6)


def test_upsampler_starts_as_bilinear_and_checks_inputs():
    torch.manual_seed(0)
    up = MaskUpsampler(in_channels=4, hidden=8, scale=4)
    logits, feats, imgs = torch.randn(3, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 3, 64, 64)
    out = up(logits, feats, torch.tensor([0, 1, 1]), imgs)
    assert out.shape == (3, 64, 64)
    ref = F.interpolate(logits[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out, ref)  # zero-initialised head
    with pytest.raises(ValueError, match="g_pixel_values"):
        up(logits, feats, torch.tensor([0, 1, 1]), None)
    with pytest.raises(ValueError, match="grid"):
        up(logits, torch.randn(2, 4, 8, 8), torch.tensor([0, 1, 1]), imgs)


@pytest.fixture(scope="module")
def upsampler_model():
    from mmengine.config import Config

    base = Config.fromfile(str(TINY_MODEL_CFG))
    grounding = dict(base.model.grounding_encoder, upsampler=dict(hidden=8, scale=4, num_layers=1))
    loss = dict(base.model.loss_mask, resolution="full")
    return build_tiny_model(seed=3, grounding_encoder=grounding, loss_mask=loss)


def test_upsampler_is_a_trainable_part_that_learns(upsampler_model):
    model, cfg = upsampler_model
    names = [n for n, _ in model.named_parameters() if n.startswith("grounding_encoder.upsampler.")]
    assert names and model.trainable["mask_upsampler"] == "full"
    assert all(n in model.trainable_keys() for n in names)
    assert model.parameter_counts()["mask_upsampler"][0] > 0
    dataset = build_tiny_dataset(cfg, objects_per_image=1)
    data = model.data_preprocessor(sa2va_collate([dataset[0], dataset[1]]), True)
    out = model(**data, mode="tensor")
    # SAM2 at 256 px -> 64x64 logits -> the upsampler's 256x256.
    assert out["mask_logits"].shape == (2, 256, 256)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # the head starts at zero: the layers below it get gradients from the 2nd step on
        opt.zero_grad()
        sum(model(**data, mode="loss").values()).backward()
        opt.step()
    for n in names:
        assert params[n].grad is not None and params[n].grad.abs().sum() > 0, n
        assert not torch.equal(before[n], params[n].detach()), n


def test_uint8_and_float32_batches_give_identical_outputs(upsampler_model):
    """The model normalises uint8 pixels on its device (ViT, SAM2 encoder and the upsampler's image
    input) exactly as the float32 pipeline does on the host."""
    model, cfg = upsampler_model
    outs = []
    for fmt in ("uint8", "float32"):
        dataset = build_tiny_dataset(cfg, objects_per_image=1, pixel_format=fmt)
        batch = sa2va_collate([dataset[0], dataset[1]])
        assert batch["data"].g_pixel_values.dtype == getattr(torch, fmt)
        model.eval()
        with torch.no_grad():
            outs.append(model(**model.data_preprocessor(batch, True), mode="tensor"))
    assert torch.equal(outs[0]["mask_logits"], outs[1]["mask_logits"])
    assert torch.equal(outs[0]["logits"], outs[1]["logits"])


@pytest.mark.parametrize("which", ["reference", "upsampler"])
def test_predict_returns_full_resolution_probabilities_scored_by_the_metric(
    which, tiny_model_and_cfg, upsampler_model
):
    model, cfg = tiny_model_and_cfg if which == "reference" else upsampler_model
    dataset = build_tiny_dataset(
        cfg, ann="annotations_test.json", objects_per_image=None, random_templates=False
    )
    batch = sa2va_collate([dataset[0], dataset[1]])
    model.eval()
    outputs = model.val_step(batch)
    metric = SegMetric(prefix=None, cl_dice=False)
    metric.process(batch, outputs)
    got = metric.compute_metrics(metric.results)
    expected = []
    for o in outputs:
        assert o["probs"].shape == o["gt"].shape == (1, 512, 512)
        assert (
            o["probs"].dtype == torch.float32
            and 0.0 <= float(o["probs"].min()) <= float(o["probs"].max()) <= 1.0
        )
        expected.append(dice(o["probs"][0] > 0.5, o["gt"][0]))
    assert got["dice"] == pytest.approx(sum(expected) / len(expected))
    assert metric.last_evaluator.keys == ["Image_11L.jpg|0|blood vessel", "Image_11R.jpg|0|blood vessel"]
