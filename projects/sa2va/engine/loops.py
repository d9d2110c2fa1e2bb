"""An iteration-based training loop with ``max_epochs`` as the knob and exact mid-epoch resume.

Subclass of mmengine 0.10.6 ``IterBasedTrainLoop``. Why not ``EpochBasedTrainLoop``: on resume it
restarts the interrupted epoch from its first batch (``runner.resume`` restores ``_epoch`` and
``_iter``, then ``run_epoch`` iterates the whole data loader again), so a run resumed from
``iter_N.pth`` mid-epoch re-trains batches and does not reproduce an uninterrupted run.
``IterBasedTrainLoop`` does skip, but by loading and discarding every seen batch (images decoded,
workers busy; minutes on a long run) and sleeps 2 s at each epoch end. This loop:

* converts ``max_epochs`` (may be fractional) into ``max_iters = ceil(max_epochs * len(dataloader))``;
* on resume at iteration ``N`` starts epoch ``N // len`` (sampler ``set_epoch``) and skips the first
  ``N % len`` batches at the index level (no data loaded; exact for ``BatchSampler`` loaders);
* with loader workers, iterates one DataLoader over all epochs (:class:`EpochChain`: each epoch's batches
  as its sampler gives them, epoch after epoch), so the workers prepare the next epoch's first batches
  while the current epoch ends. With one iterator per epoch the first batch of every epoch waited for one
  worker to build it whole: 1.5-1.9 s per epoch on average for Sa2VA-1B at batch 32 on an H100 box, half
  the time of a 6-iteration epoch (bench/records/speed_s11);
* restores the per-rank random state saved with the checkpoint (``Sa2VARunner``) at the point where
  the uninterrupted run was when it saved, so dropout / point sampling draw the same numbers;
* turns an out-of-memory error into one that names the batch size and the device memory.

Dataset randomness must be a function of (seed, index) (``RefSegDataset`` is), not of worker state.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from mmengine.logging import MMLogger
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop
from torch.utils.data import BatchSampler, DataLoader


class _SkipOnceSampler:
    """Wraps a sampler; the next ``iter()`` starts ``skip`` indices in (then ``skip`` resets to 0)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        n, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), n, None)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class EpochChain:
    """A batch sampler that runs a batch sampler epoch after epoch without end: ``set_epoch(e)``, then epoch
    ``e``'s batches, then ``e + 1``'s. ``start`` / ``skip``: the next ``iter()`` starts at epoch ``start``,
    ``skip`` batches in (skipped as index lists: no data loaded). ``len()`` is one epoch's batches.

    The batches are those of iterating the batch sampler once per epoch (a last partial batch of an epoch
    stays partial): only the number of DataLoader iterators changes, one per run.
    """

    def __init__(self, batch_sampler: Any, set_epoch: Any) -> None:
        self.batch_sampler = batch_sampler
        self.set_epoch = set_epoch
        self.start = 0
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.start, self.skip
        while True:
            self.set_epoch(epoch)
            yield from itertools.islice(iter(self.batch_sampler), skip, None)
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return len(self.batch_sampler)


def epoch_chain_loader(loader: DataLoader, chain: EpochChain) -> DataLoader:
    """A DataLoader over ``loader``'s dataset with ``loader``'s workers, collate, pinning and seeding, that
    takes its batches from ``chain``. Not persistent: the run makes one iterator of it."""
    kwargs: dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        pin_memory_device=loader.pin_memory_device,
    )
    if hasattr(loader, "in_order"):  # torch >= 2.6
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset, batch_sampler=chain, **kwargs)


def describe_oom(
    error: BaseException,
    *,
    iteration: int,
    first: bool,
    batch_size: int | None,
    accumulation: int,
    world_size: int,
) -> str:
    """An out-of-memory message that names what to change (batch size) and the device memory."""
    parts = [
        f"out of memory at iteration {iteration}"
        + (" (the first iteration of this run: this configuration does not fit)" if first else ""),
        f"train_dataloader.batch_size={batch_size} per rank x accumulative_counts={accumulation} x "
        f"world_size={world_size}",
    ]
    if torch.cuda.is_available():
        dev = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        gib = 1024**3
        parts.append(
            f"cuda:{dev}: {free / gib:.2f} GiB free of {total / gib:.2f} GiB, peak allocated by this "
            f"process {peak / gib:.2f} GiB"
        )
    parts.append(
        f"torch: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
    )
    parts.append(
        "lower train_dataloader.batch_size (raise optim_wrapper.accumulative_counts to keep the global "
        "batch), enable gradient checkpointing, or shard with --deepspeed zero2"
    )
    return "; ".join(parts)


@LOOPS.register_module()
class Sa2VATrainLoop(IterBasedTrainLoop):
    """Iteration-based training for ``max_epochs`` epochs (or ``max_iters``) with exact resume.

    Args:
        runner: the runner.
        dataloader: a ``DataLoader`` or its config.
        max_epochs: epochs to train (fractional allowed); exactly one of ``max_epochs`` / ``max_iters``.
        max_iters: iterations to train.
        val_begin, val_interval, dynamic_intervals: as ``IterBasedTrainLoop`` (in iterations).
    """

    def __init__(
        self,
        runner: Any,
        dataloader: DataLoader | dict,
        max_epochs: float | None = None,
        max_iters: int | None = None,
        val_begin: int = 1,
        val_interval: int = 1000,
        dynamic_intervals: list[tuple[int, int]] | None = None,
    ) -> None:
        if (max_epochs is None) == (max_iters is None):
            raise ValueError(
                f"train_cfg: give exactly one of max_epochs / max_iters, got max_epochs={max_epochs}, "
                f"max_iters={max_iters}"
            )
        if isinstance(dataloader, dict):
            diff_rank_seed = runner._randomness_cfg.get("diff_rank_seed", False)
            dataloader = runner.build_dataloader(dataloader, seed=runner.seed, diff_rank_seed=diff_rank_seed)
        self.iters_per_epoch = len(dataloader)
        if self.iters_per_epoch == 0:
            raise ValueError("train_dataloader has no batches: is the dataset empty or batch_size too large?")
        if max_iters is None:
            if max_epochs <= 0:
                raise ValueError(f"train_cfg.max_epochs must be > 0, got {max_epochs}")
            max_iters = math.ceil(max_epochs * self.iters_per_epoch)
        super().__init__(
            runner,
            dataloader,
            max_iters=int(max_iters),
            val_begin=val_begin,
            val_interval=val_interval,
            dynamic_intervals=dynamic_intervals,
        )
        self._max_epochs = math.ceil(self._max_iters / self.iters_per_epoch)
        self.dataloader_iterator = None  # replaced by one iterator per epoch in run()
        self._run_start_iter = 0
        self.batch_wait = 0.0  # seconds the last iteration waited in next() for its batch
        # With workers: one iterator over all epochs, which skips a resumed run's batches itself (the run's
        # `dataloader` stays as built, for the hooks). Without: one iterator per epoch; a resumed epoch's
        # first iterator skips at the index level (_SkipOnceSampler) when the batch sampler is a plain one.
        self._chain: EpochChain | None = None
        self._chain_loader: DataLoader | None = None
        self._skipper: _SkipOnceSampler | None = None
        bs = self.dataloader.batch_sampler
        if self.dataloader.num_workers > 0 and bs is not None:
            self._chain = EpochChain(bs, self._set_epoch)
            self._chain_loader = epoch_chain_loader(self.dataloader, self._chain)
            # mmengine's __init__ made an iterator of `dataloader`; with persistent workers the loader keeps
            # it (workers started, batches prefetched) for its next iter(). It will not have one: stop them.
            self.dataloader._iterator = None
        elif type(bs) is BatchSampler:
            self._skipper = _SkipOnceSampler(bs.sampler)
            bs.sampler = self._skipper

    def _set_epoch(self, epoch: int) -> None:
        sampler = self.dataloader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif self._skipper is not None:
            self._skipper.set_epoch(epoch)

    def _epoch_iterator(self, skip_batches: int) -> Iterator[Sequence[dict]]:
        """A fresh iterator over the current epoch, its first ``skip_batches`` batches skipped."""
        if skip_batches and self._skipper is not None:
            self._skipper.skip = skip_batches * self.dataloader.batch_sampler.batch_size
            return iter(self.dataloader)
        it = iter(self.dataloader)
        if skip_batches:
            MMLogger.get_current_instance().warning(
                f"{type(self.dataloader.batch_sampler).__name__} is not a plain BatchSampler: skipping "
                f"{skip_batches} batches by loading them"
            )
            for _ in range(skip_batches):
                next(it)
        return it

    def run(self) -> torch.nn.Module:
        """Train from ``self._iter`` (0, or the resumed iteration) to ``max_iters``."""
        runner = self.runner
        ipe = self.iters_per_epoch
        self._run_start_iter = self._iter
        self._epoch, offset = divmod(self._iter, ipe)
        runner.call_hook("before_train")
        runner.call_hook("before_train_epoch")  # one "epoch" for the hooks, as IterBasedTrainLoop
        self._set_epoch(self._epoch)
        rng = runner.pop_resumed_rng_state() if hasattr(runner, "pop_resumed_rng_state") else None
        if self._iter > 0:
            MMLogger.get_current_instance().info(
                f"resuming at iteration {self._iter} = epoch {self._epoch} + {offset} batches "
                f"(skipped by index, no data loaded)"
            )
        if self._chain is not None:
            # One iterator for the run (it draws a base seed once, as the uninterrupted run did at its
            # start): build, then restore the random state.
            self._chain.start, self._chain.skip = self._epoch, offset
            iterator = iter(self._chain_loader)
            if rng is not None:
                rng()
        else:
            # The uninterrupted run saved its random state after iteration N-1. At an epoch boundary it
            # then built the next epoch's iterator (which draws a base seed): restore first, then build.
            # Mid-epoch it built nothing: build (and skip), then restore.
            if rng is not None and offset == 0:
                rng()
            iterator = self._epoch_iterator(offset)
            if rng is not None and offset != 0:
                rng()
        # mmengine's loops call model.train() every iteration: a walk over every module (11 ms per iteration
        # for Sa2VA-4B on an H100, bench/records/speed_s11). Here: once (modules that from_pretrained left in
        # eval mode train too), and again after each validation, which leaves the model in eval mode.
        runner.model.train()
        while self._iter < self._max_iters and not self.stop_training:
            if not runner.model.training:
                runner.model.train()
            if self._iter % ipe == 0 and self._iter != self._run_start_iter:
                self._epoch += 1
                if self._chain is None:  # the chain runs into the next epoch by itself
                    self._set_epoch(self._epoch)
                    iterator = self._epoch_iterator(0)
            t = time.perf_counter()
            data_batch = next(iterator)
            self.batch_wait = time.perf_counter() - t  # read by DataWaitHook
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (
                runner.val_loop is not None
                and self._iter >= self.val_begin
                and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)
            ):
                runner.val_loop.run()
        runner.call_hook("after_train_epoch")
        runner.call_hook("after_train")
        return runner.model

    def run_iter(self, data_batch: Sequence[dict]) -> None:
        """One iteration; an out-of-memory error is re-raised naming batch size and device memory."""
        try:
            super().run_iter(data_batch)
        except torch.OutOfMemoryError as e:
            ow = self.runner.optim_wrapper
            msg = describe_oom(
                e,
                iteration=self._iter,
                first=self._iter == self._run_start_iter,
                batch_size=self.dataloader.batch_size,
                accumulation=int(getattr(ow, "_accumulative_counts", 1)),
                world_size=self.runner.world_size,
            )
            raise torch.OutOfMemoryError(msg) from e
