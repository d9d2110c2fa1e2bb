"""Training hooks that ``Sa2VARunner`` registers by default (mmengine 0.10.6 ``Hook``).

* :class:`GlobalBatchLoggerHook`: logs once, at the start, the global batch
  (per-rank batch x gradient accumulation x world size) and the iteration plan.
* :class:`LossRecorderHook`: appends every iteration's raw (unsmoothed) losses to
  ``<work_dir>/train_losses.jsonl`` (rank 0; optionally every rank, with the sample ids it trained on),
  the file that resume / scaling comparisons read. A resumed run appends; a reader keeps the last
  record of each iteration.
* :class:`DataWaitHook`: warns once when the loop spends a large share of its time waiting for batches
  (the loader's workers are slower than the model), naming the times and the setting to raise.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .state import encode_message_hub


def global_batch_size(runner: Any) -> tuple[int, int, int]:
    """``(batch per rank, accumulation, world size)`` of a runner's training set-up."""
    batch = int(runner.train_dataloader.batch_size or 1)
    accumulation = int(getattr(runner.optim_wrapper, "_accumulative_counts", 1))
    strategy = getattr(runner, "strategy", None)  # FlexibleRunner + DeepSpeed keeps it in its config
    ds_cfg = getattr(strategy, "config", None)
    if isinstance(ds_cfg, dict) and isinstance(ds_cfg.get("gradient_accumulation_steps"), int):
        accumulation = ds_cfg["gradient_accumulation_steps"]
    return batch, accumulation, int(runner.world_size)


@HOOKS.register_module()
class GlobalBatchLoggerHook(Hook):
    """Log ``global batch = batch x accumulation x world size`` once before training (rank 0 only)."""

    priority = "VERY_LOW"

    def before_train(self, runner: Any) -> None:
        batch, acc, world = global_batch_size(runner)
        loop = runner.train_loop
        ipe = getattr(loop, "iters_per_epoch", None) or len(runner.train_dataloader)
        runner.message_hub.update_info("global_batch_size", batch * acc * world)
        runner.logger.info(
            f"global batch = {batch} per rank x {acc} accumulation x {world} ranks = {batch * acc * world} "
            f"samples per optimiser step; {ipe} iterations per epoch per rank, {loop.max_iters} iterations "
            f"({math.ceil(loop.max_iters / acc)} optimiser steps, {loop.max_iters / ipe:g} epochs)"
        )


@HOOKS.register_module()
class SafeMessageHubHook(Hook):
    """Store the message hub in checkpoints without pickled functions (see ``encode_message_hub``).

    Runs last among ``before_save_checkpoint`` hooks; ``Sa2VARunner.load_checkpoint`` decodes.
    """

    priority = "LOWEST"

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = encode_message_hub(checkpoint["message_hub"])


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean())
    return float(v)


@HOOKS.register_module()
class LossRecorderHook(Hook):
    """Append ``{"iter", "loss", <each loss term>, "time", "lr", "data_time", "max_memory_mib"}`` per
    iteration to a JSON-lines file (``lr`` / ``data_time`` when the runtime-info / iteration-timer hooks
    logged them, ``max_memory_mib``, the peak CUDA memory allocated so far on this rank, when CUDA is in
    use).

    Args:
        filename: file name inside the work dir.
        all_ranks: every rank writes ``<stem>.rank<r>.jsonl`` (rank 0 too) with the ``image_ids`` of its
            batch, for checking the data sharding; default rank 0 only.
        reduce: ``'mean'`` all-reduces the losses across ranks first (the global loss; one collective
            per iteration); ``None`` records the local values.
    """

    priority = "LOW"

    def __init__(
        self, filename: str = "train_losses.jsonl", all_ranks: bool = False, reduce: str | None = None
    ):
        if reduce not in (None, "mean"):
            raise ValueError(f"LossRecorderHook.reduce must be None or 'mean', got {reduce!r}")
        self.filename = filename
        self.all_ranks = all_ranks
        self.reduce = reduce
        self._file: Any = None

    def _path(self, runner: Any) -> Path | None:
        rank = runner.rank
        if self.all_ranks:
            stem = Path(self.filename)
            return Path(runner.work_dir) / f"{stem.stem}.rank{rank}{stem.suffix}"
        return Path(runner.work_dir) / self.filename if rank == 0 else None

    def before_train(self, runner: Any) -> None:
        path = self._path(runner)
        if path is not None:
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if not outputs:
            return
        keys = sorted(k for k in outputs if "loss" in k)
        values = [_to_float(outputs[k]) for k in keys]
        if self.reduce == "mean" and dist.is_available() and dist.is_initialized():
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            )
            t = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(t)
            values = (t / dist.get_world_size()).tolist()
        if self._file is None:
            return
        record: dict[str, Any] = {"iter": runner.iter + 1, **dict(zip(keys, values)), "time": time.time()}
        scalars = runner.message_hub.log_scalars
        if "train/lr" in scalars:  # the lr this iteration used (RuntimeInfoHook)
            record["lr"] = float(scalars["train/lr"].current())
        if "train/data_time" in scalars:  # seconds this iteration waited for its batch (IterTimerHook)
            record["data_time"] = float(scalars["train/data_time"].current())
        if _cuda_in_use():  # peak so far, host-side counter
            record["max_memory_mib"] = torch.cuda.max_memory_allocated() // 2**20
        if self.all_ranks and isinstance(data_batch, dict) and data_batch.get("data") is not None:
            record["image_ids"] = list(getattr(data_batch["data"], "image_ids", []))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def after_train(self, runner: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@HOOKS.register_module()
class DataWaitHook(Hook):
    """Warn once per run (rank 0) when the loop waits for its batches more than ``share`` of the time.

    The share is the loop's wait for each batch (``Sa2VATrainLoop.batch_wait``, the time in ``next()``; with
    another loop mmengine's ``data_time``, which also holds the after-iteration hooks that run after the
    iteration timer, such as a checkpoint save) over mmengine's ``time`` of the whole iteration, summed over
    ``window`` consecutive iterations after the run's first ``skip`` (worker start-up, compilation). A
    waiting loop leaves the device idle: through ``tools/train.py`` the
    compiled Sa2VA-1B step at batch 32 waited for its 4 workers at 12 of 59 iterations on an H100 box
    (bench/records/speed_s11). The warning names the setting to raise and a lower bound for it
    (:func:`needed_workers`): on the H200 box of bench/records/speed_s12 the same step waited 0.114 of 0.398 s
    per iteration with 4 workers, which gives 6; 8 kept up there.

    Args:
        share: the waiting share above which it warns.
        window: iterations per measurement.
        skip: iterations left out at the start of the run (or of a resumed run).
        cpu: also on CPU runs (default: only when CUDA is in use; the CPU demo loads its batches in the
            main process on purpose).
    """

    priority = "LOW"  # after IterTimerHook (NORMAL), whose `time` of this iteration it reads

    def __init__(self, share: float = 0.2, window: int = 20, skip: int = 10, cpu: bool = False) -> None:
        if not 0 < share < 1 or window < 1 or skip < 0:
            raise ValueError(
                f"DataWaitHook needs 0 < share < 1, window >= 1, skip >= 0; got share={share}, "
                f"window={window}, skip={skip}"
            )
        self.share, self.window, self.skip, self.cpu = share, window, skip, cpu
        self._waits: list[tuple[float, float]] = []
        self._start = 0
        self.warned = False

    def before_train(self, runner: Any) -> None:
        self._waits, self._start, self.warned = [], runner.iter, False

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if self.warned or runner.rank != 0 or not (self.cpu or _cuda_in_use()):
            return
        if runner.iter - self._start < self.skip:
            return
        scalars = runner.message_hub.log_scalars
        if "train/data_time" not in scalars or "train/time" not in scalars:
            return
        wait = getattr(runner.train_loop, "batch_wait", None)
        if wait is None:
            wait = scalars["train/data_time"].current()
        self._waits.append((float(wait), float(scalars["train/time"].current())))
        if len(self._waits) < self.window:
            return
        waited = sum(d for d, _ in self._waits)
        took = sum(t for _, t in self._waits)
        self._waits.clear()
        if took <= 0 or waited / took <= self.share:
            return
        self.warned = True
        first, last = runner.iter + 2 - self.window, runner.iter + 1
        workers = runner.train_dataloader.num_workers
        if workers:
            who = f"the {workers} loader worker(s) prepare batches more slowly than the model trains on them"
            # the workers' rate scaled to the pace of the iterations without their waits
            need = f" to at least {needed_workers(workers, waited, took)}"
        else:
            who = "the training process prepares every batch itself (train_dataloader.num_workers=0)"
            need = ""
        runner.logger.warning(
            f"the loop waited for its batches {waited / took:.0%} of iterations {first}-{last} "
            f"({waited / self.window:.3f} s of {took / self.window:.3f} s per iteration): {who}. Raise "
            f"train_dataloader.num_workers{need} (this host has {os.cpu_count()} CPUs; each rank has its "
            "own workers), or time the data pipeline with bench/benchmark_data.py"
        )


def needed_workers(workers: int, waited: float, took: float) -> int:
    """Loader workers that would keep up, if they scale: ``workers`` deliver a batch per ``took`` seconds
    (summed over a window) and the model would take one per ``took - waited``, so
    ``ceil(workers * took / (took - waited))``; a lower bound, since more workers also share the host's
    CPUs with the training process. ``workers + 1`` at least; ``4 * workers`` when nearly all was waiting."""
    busy = max(took - waited, took / 4)
    return max(workers + 1, math.ceil(workers * took / busy - 1e-9))


def read_loss_records(path: str | Path) -> dict[int, dict[str, Any]]:
    """Records of a :class:`LossRecorderHook` file by iteration; a later record of an iteration wins."""
    out: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:  # a run killed mid-line leaves a partial last line
                raise ValueError(f"{path}:{line_no}: not JSON ({e}): {line[:80]!r}") from None
            out[int(rec["iter"])] = rec
    return out
