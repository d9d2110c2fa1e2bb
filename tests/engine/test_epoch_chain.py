"""With loader workers, ``Sa2VATrainLoop`` iterates one DataLoader over all epochs (``EpochChain``): the
batches are those of one iterator per epoch, and the first batch of an epoch is prepared while the previous
epoch ends (bench/records/speed_s11: 1.5-1.9 s of waiting per epoch on average for Sa2VA-1B at batch 32
on an H100 box with one iterator per epoch)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mmengine.dataset import DefaultSampler
from mmengine.hooks import Hook
from torch.utils.data import BatchSampler

from projects.sa2va.datasets.samplers import LengthGroupedSampler
from projects.sa2va.engine.loops import EpochChain
from projects.sa2va.engine.runner import Sa2VARunner
from tests.tiny import slow_samples, tiny_demo_run_cfg

SAMPLE_S = 0.3  # a worker's time per sample: one batch of 2 takes 0.6 s
STEP_S = 0.7  # each training iteration at least this long: the workers keep ahead within an epoch


@pytest.mark.parametrize("grouped", [False, True], ids=["DefaultSampler", "LengthGroupedSampler"])
def test_chain_gives_each_epochs_batches_from_a_start_and_skip(grouped) -> None:
    if grouped:
        lengths = [5, 90, 12, 40, 7, 66, 3]
        sampler = LengthGroupedSampler(
            list(range(7)), batch_size=3, mega_batch_mult=2, seed=3, lengths=lengths
        )
    else:
        sampler = DefaultSampler(list(range(7)), shuffle=True, seed=3)
    batches = BatchSampler(sampler, batch_size=3, drop_last=False)

    def epoch_batches(e: int) -> list[list[int]]:
        sampler.set_epoch(e)
        return list(batches)

    want = epoch_batches(1)[1:] + epoch_batches(2) + epoch_batches(3)
    assert [len(b) for b in want] == [3, 1, 3, 3, 1, 3, 3, 1]  # each epoch's partial batch kept
    chain = EpochChain(batches, sampler.set_epoch)
    chain.start, chain.skip = 1, 1
    it = iter(chain)
    assert [next(it) for _ in range(len(want))] == want
    assert len(chain) == 3
    assert epoch_batches(1) != epoch_batches(2)  # the epochs differ: the test sees the order


class WaitRecorder(Hook):
    """Per iteration: the image ids of its batch and how long the loop waited for it (from the end of the
    previous iteration's hooks to this iteration's start). Each iteration lasts at least ``STEP_S``."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.ids: list[list[str]] = []
        self.waits: list[float] = []
        self._end: float | None = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._end is not None:
            self.waits.append(time.perf_counter() - self._end)
        self.ids.append(list(data_batch["data"].image_ids))
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        time.sleep(max(0.0, STEP_S - (time.perf_counter() - self._start)))
        self._end = time.perf_counter()


def _train(tmp_path: Path, workers: int) -> WaitRecorder:
    names = ["Image_01L.jpg", "Image_01R.jpg", "Image_02L.jpg", "Image_02R.jpg"]
    cfg = tiny_demo_run_cfg(tmp_path / f"work{workers}", names, max_iters=6)  # batch 2: 3 epochs
    cfg.train_dataloader.update(batch_size=2, num_workers=workers, persistent_workers=workers > 0)
    runner = Sa2VARunner.from_cfg(cfg)
    recorder = WaitRecorder()
    runner.register_hook(recorder)
    runner.train()
    return recorder


def test_workers_prepare_the_next_epoch_and_train_the_same_batches(tmp_path, monkeypatch) -> None:
    slow_samples(monkeypatch, SAMPLE_S)  # each sample takes SAMPLE_S to prepare
    chained = _train(tmp_path, workers=2)
    plain = _train(tmp_path, workers=0)  # one iterator per epoch, batches loaded in the loop
    assert chained.ids == plain.ids
    assert len({tuple(b) for b in chained.ids[:2]} ^ {tuple(b) for b in chained.ids[2:4]}) > 0
    # waits before iterations 2..6; iterations 3 and 5 start epochs 2 and 3. One iterator per epoch would
    # wait there for a worker to prepare a whole batch (2 x SAMPLE_S = 0.6 s); the plain run prepares
    # every batch in the loop (0.6 s each).
    assert min(plain.waits) >= 2 * SAMPLE_S * 0.9, plain.waits
    epoch_starts = [chained.waits[1], chained.waits[3]]
    assert max(epoch_starts) < SAMPLE_S, chained.waits
