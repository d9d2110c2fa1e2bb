"""Sa2VAPredictor's tiled mode and flip test-time augmentation on the overfit tiny model.

The tiny model's SAM2 input is 256 px, so the bundled 512 x 512 images are twice the model input:
tiled with the default window (256 px, overlap 0.25) they are predicted in 3 x 3 windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from projects.sa2va.tiling import tile_windows

PROMPT = "Please segment the blood vessel."


class _ForwardCounter:
    """Records the batch size of every teacher-forced forward of the predictor's model."""

    def __init__(self, model) -> None:
        self.model = model
        self.sizes: list[int] = []
        self._orig = model.forward_tensors

    def __enter__(self) -> _ForwardCounter:
        def counted(batch):
            self.sizes.append(int(batch.input_ids.shape[0]))
            return self._orig(batch)

        self.model.forward_tensors = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward_tensors  # back to the class method


def test_tiled_prediction_is_full_resolution_with_one_forward_per_window(overfit) -> None:
    p = overfit.predictor
    image = overfit.images["01L"]
    plain = p.predict([image], PROMPT)[0]
    with _ForwardCounter(p.model) as counter:
        tiled = p.predict([image], PROMPT, tiling="auto")[0]
    windows = tile_windows(512, 512, p.sam2_size, 0.25)
    assert p.sam2_size == 256 and len(windows) == 9
    # one whole-image forward (answer, [SEG] embedding), then the 9 windows in batches of 4
    assert counter.sizes[0] == 1 and counter.sizes[1:] == [4, 4, 1]
    assert tiled.views == 9 and plain.views == 1
    assert tiled.text == plain.text == "Sure, [SEG]." and tiled.token_ids == plain.token_ids
    assert tiled.probs.shape == tiled.masks.shape == (1, 512, 512)
    assert tiled.probs.dtype == np.float32 and tiled.probs.min() >= 0.0 and tiled.probs.max() <= 1.0
    np.testing.assert_array_equal(tiled.masks, tiled.probs > p.threshold)
    np.testing.assert_array_equal(tiled.seg_embeds, plain.seg_embeds)  # from the whole-image pass
    assert not np.allclose(tiled.probs, plain.probs, atol=1e-3)  # the windows really were predicted


def test_tiled_probs_are_the_windows_probs_blended(overfit) -> None:
    """Where only one window covers a pixel the tiled map is that window's prediction; elsewhere a
    weighted mean of the covering windows' predictions (between their min and max)."""
    p = overfit.predictor
    image = overfit.images["01R"]
    tiled = p.predict([image], PROMPT, tiling={"mode": "on"})[0]
    windows = tile_windows(512, 512, 256, 0.25)
    per_window = p._view_probs([w.crop(image) for w in windows], PROMPT, tiled.token_ids, 1)
    stack = np.full((len(windows), 512, 512), np.nan)
    for k, (w, probs) in enumerate(zip(windows, per_window)):
        assert probs.shape == (1, 256, 256)
        rows, cols = w.slices
        stack[k, rows, cols] = probs[0]
    # window 0 alone covers [0, 128) x [0, 128) (the next windows start at 128)
    np.testing.assert_allclose(tiled.probs[0, :128, :128], per_window[0][0, :128, :128], atol=1e-6)
    lo, hi = np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
    assert (tiled.probs[0] >= lo - 1e-6).all() and (tiled.probs[0] <= hi + 1e-6).all()


def test_one_window_covering_the_image_equals_the_whole_image(overfit) -> None:
    p = overfit.predictor
    image = overfit.images["01L"]
    plain = p.predict([image], PROMPT)[0]
    auto_big = p.predict([image], PROMPT, tiling={"mode": "auto", "window": 512})[0]
    assert auto_big.views == 1
    np.testing.assert_array_equal(auto_big.probs, plain.probs)  # auto: not tiled at all
    on_big = p.predict([image], PROMPT, tiling={"mode": "on", "window": 600})[0]
    assert on_big.views == 1
    np.testing.assert_allclose(on_big.probs, plain.probs, atol=1e-5)  # one window = the whole image


def test_flip_tta_averages_the_mirrored_view_flipped_back(overfit) -> None:
    p = overfit.predictor
    image = overfit.images["01L"]
    plain = p.predict([image], PROMPT)[0]
    tta = p.predict([image], PROMPT, flip_tta=True)[0]
    assert tta.views == 2 and tta.text == plain.text
    mirrored = p._view_probs([image[:, ::-1]], PROMPT, plain.token_ids, 1)[0]
    np.testing.assert_allclose(tta.probs, 0.5 * (plain.probs + mirrored[:, :, ::-1]), atol=1e-6)
    assert not np.allclose(tta.probs, plain.probs, atol=1e-3)


def test_flip_tta_of_the_mirrored_image_is_the_mirror(overfit) -> None:
    """The same answer teacher-forced: TTA(mirror(x)) = mirror(TTA(x)), and a mirror-symmetric image
    gets a mirror-symmetric prediction."""
    p = overfit.predictor
    image = overfit.images["01L"]
    answer = p.predict([image], PROMPT)[0].token_ids
    whole = p._view_probs([image], PROMPT, answer, 1)[0]
    mirrored_whole = p._view_probs([image[:, ::-1]], PROMPT, answer, 1)[0]
    tta = p._blended_probs(image, PROMPT, answer, whole, p.tiling, flip=True)[0]
    tta_m = p._blended_probs(image[:, ::-1].copy(), PROMPT, answer, mirrored_whole, p.tiling, flip=True)[0]
    np.testing.assert_allclose(tta_m, tta[:, :, ::-1], atol=1e-6)
    symmetric = np.concatenate([image[:, :256], image[:, :256][:, ::-1]], axis=1)
    sym_whole = p._view_probs([symmetric], PROMPT, answer, 1)[0]
    sym = p._blended_probs(symmetric, PROMPT, answer, sym_whole, p.tiling, flip=True)[0]
    np.testing.assert_allclose(sym, sym[:, :, ::-1], atol=1e-6)
    assert not np.allclose(sym_whole, sym_whole[:, :, ::-1], atol=1e-3)  # without TTA it is not


@pytest.mark.parametrize("tiling", [{"mode": "on"}, {"mode": "auto", "window": 200, "overlap": 0.5}])
def test_tiled_flip_tta_doubles_the_views(overfit, tiling) -> None:
    p = overfit.predictor
    image = overfit.images["01L"]
    tiled = p.predict([image], PROMPT, tiling=tiling)[0]
    both = p.predict([image], PROMPT, tiling=tiling, flip_tta=True)[0]
    window = tiling.get("window", 256)
    n = len(tile_windows(512, 512, window, tiling.get("overlap", 0.25)))
    assert tiled.views == n and both.views == 2 * n
    assert both.probs.shape == (1, 512, 512)
    assert not np.allclose(both.probs, tiled.probs, atol=1e-3)


def test_predictor_defaults_and_errors(overfit) -> None:
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    p = overfit.predictor
    assert p.tiling.mode == "off" and p.flip_tta is False
    q = Sa2VAPredictor(p.model, tiling="auto", flip_tta=True, window_batch_size=9, processor=p.processor)
    with _ForwardCounter(q.model) as counter:
        pred = q.predict([overfit.images["01L"]], PROMPT)[0]
    assert pred.views == 18 and counter.sizes == [1, 9, 9]
    with pytest.raises(ValueError, match="tile mode"):
        p.predict([overfit.images["01L"]], PROMPT, tiling="always")
    with pytest.raises(ValueError, match="window_batch_size"):
        Sa2VAPredictor(p.model, processor=p.processor, window_batch_size=0)
