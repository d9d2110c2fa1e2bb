"""TiledEvalStep: tiled / flip-TTA teacher-forced evaluation on the tiny model (SAM2 input 256 px, so
the bundled 512 x 512 images are twice the model input: 3 x 3 windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.evaluation.seg_metric import SegMetric
from projects.sa2va.evaluation.tiled import TiledEvalStep, view_item
from projects.sa2va.tiling import tile_windows
from tests.tiny import build_tiny_dataset


@pytest.fixture(scope="module")
def model_and_dataset(tiny_model_and_cfg):
    model, cfg = tiny_model_and_cfg
    model.eval()
    ds = build_tiny_dataset(
        cfg, "annotations_test.json", objects_per_image=None, random_templates=False, augment=None
    )
    return model, ds


class _Counter:
    def __init__(self, model) -> None:
        self.model, self.sizes = model, []

    def __enter__(self):
        orig = type(self.model).val_step

        def counted(batch):
            self.sizes.append(int(batch["data"].input_ids.shape[0]))
            return orig(self.model, batch)

        self.model.val_step = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.model.val_step


def test_view_item_of_the_whole_image_is_the_dataset_item(model_and_dataset) -> None:
    _, ds = model_and_dataset
    from projects.sa2va.datasets.annotations import decode_record_masks

    rec = ds.records[0]
    image = np.asarray(ds.load_image(rec, 0))
    masks = decode_record_masks(rec, *image.shape[:2], validated=True)
    item, expected = view_item(ds, 0, image, masks), ds[0]
    assert set(item) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(item[key], value), key
        else:
            assert item[key] == value, key


def test_untiled_step_equals_val_step(model_and_dataset) -> None:
    model, ds = model_and_dataset
    batch = sa2va_collate([ds[0], ds[1]])
    step = TiledEvalStep(model, ds, tiling="off")
    assert not step.active
    expected = model.val_step(batch)
    got = step(batch)
    for e, g in zip(expected, got):
        assert e["image_id"] == g["image_id"] and e["texts"] == g["texts"]
        assert torch.equal(e["gt"], g["gt"])
        torch.testing.assert_close(g["probs"], e["probs"].float(), atol=1e-5, rtol=0)


def test_tiled_step_runs_one_view_per_window_and_blends(model_and_dataset) -> None:
    model, ds = model_and_dataset
    batch = sa2va_collate([ds[0]])
    step = TiledEvalStep(model, ds, tiling="auto", window_batch_size=4)
    assert step.model_size == 256
    with _Counter(model) as counter:
        out = step(batch)[0]
    windows = tile_windows(512, 512, 256, 0.25)
    assert counter.sizes == [4, 4, 1] and step.views_run == len(windows) == 9
    assert out["probs"].shape == out["gt"].shape == (1, 512, 512)
    whole = model.val_step(batch)[0]["probs"]
    assert not torch.allclose(out["probs"], whole, atol=1e-3)
    # window 0 alone covers [0, 128) x [0, 128): there the map is window 0's own prediction
    rec = ds.records[0]
    image = np.asarray(ds.load_image(rec, 0))
    from projects.sa2va.datasets.annotations import decode_record_masks

    masks = decode_record_masks(rec, 512, 512, validated=True)
    win = windows[0]
    item = view_item(ds, 0, win.crop(image), masks[:, :256, :256])
    first = model.val_step(sa2va_collate([item]))[0]["probs"]
    torch.testing.assert_close(out["probs"][:, :128, :128], first[:, :128, :128].float(), atol=1e-5, rtol=0)
    metric = SegMetric(cl_dice=False, prefix="test")  # the outputs feed the metric as val_step's do
    metric.process(batch, [out])
    assert len(metric.results) == 1


def test_flip_tta_step_is_mirror_consistent(model_and_dataset) -> None:
    model, ds = model_and_dataset
    batch = sa2va_collate([ds[1]])
    step = TiledEvalStep(model, ds, flip_tta=True)
    assert step.active
    out = step(batch)[0]["probs"]
    assert step.views_run == 2
    plain = model.val_step(batch)[0]["probs"].float()
    rec = ds.records[1]
    image = np.asarray(ds.load_image(rec, 1))
    from projects.sa2va.datasets.annotations import decode_record_masks

    masks = decode_record_masks(rec, 512, 512, validated=True)
    mirrored_item = view_item(ds, 1, image[:, ::-1], np.ascontiguousarray(masks[:, :, ::-1]))
    mirrored = model.val_step(sa2va_collate([mirrored_item]))[0]["probs"].float()
    torch.testing.assert_close(out, 0.5 * (plain + mirrored.flip(-1)), atol=1e-5, rtol=0)


def test_duplicate_images_are_refused(tiny_model_and_cfg, tmp_path) -> None:
    import json

    from tests.tiny import DATA_ROOT

    model, cfg = tiny_model_and_cfg
    records = json.loads((DATA_ROOT / "annotations_test.json").read_text())
    dup = tmp_path / "dup.json"
    other = {**records[0], "text": ["artery"]}  # same image, another object: a second record
    dup.write_text(json.dumps([records[0], other]))
    ds = build_tiny_dataset(cfg, str(dup), objects_per_image=None, random_templates=False)
    with pytest.raises(ValueError, match="share the image"):
        TiledEvalStep(model, ds, tiling="on")


def test_step_stands_in_for_the_model_in_run_metric(tiny_model_and_cfg, tmp_path) -> None:
    import json

    from projects.sa2va.evaluation.evaluate import build_eval_loader, run_metric
    from tests.tiny import DATA_ROOT

    model, cfg = tiny_model_and_cfg
    model.eval()
    ann = tmp_path / "two.json"
    ann.write_text(json.dumps(json.loads((DATA_ROOT / "annotations_test.json").read_text())[:2]))
    ds = build_tiny_dataset(cfg, str(ann), objects_per_image=None, random_templates=False)
    step = TiledEvalStep(model, ds, tiling="on", window_batch_size=9)
    metrics = run_metric(step, build_eval_loader(ds), SegMetric(cl_dice=False, prefix="test"), len(ds))
    assert step.views_run == 2 * 9
    assert 0.0 <= metrics["test/dice"] <= 1.0
