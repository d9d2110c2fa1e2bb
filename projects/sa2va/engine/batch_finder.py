"""Automatic micro-batch finder: the largest ``train_dataloader.batch_size`` a device fits for a config.

Three layers, each usable alone:

* :func:`search_batch` (device-agnostic core): given ``run_trial(B)``, which runs one training step at
  micro-batch ``B`` and returns what it measured, try ``start``, double until a trial runs out of memory
  (``torch.OutOfMemoryError`` or a ``RuntimeError`` saying "out of memory", :func:`is_out_of_memory`) or
  goes over the memory budget or reaches ``max_batch``, then bisect between the largest batch that fit and
  the smallest that did not. A start that does not fit is halved down to 1. ``candidates`` can restrict the
  batches tried (the ``'exact'`` policy passes the divisors of ``batch_size x accumulative_counts``). Memory
  is freed between trials (``cleanup``). Every trial is recorded (:class:`Trial`: batch, outcome, peak
  bytes, seconds).
* :class:`Sa2VATrialRunner` (in a child process): builds the config's model and training dataset through
  the project's builders (:func:`~projects.sa2va.engine.builder.construct_model`, mmengine's
  ``Runner.build_dataloader`` with the config's collate function, the config's ``optim_wrapper`` with
  ``accumulative_counts=1``) and runs one real step (``model.train_step``: forward, backward, clipping,
  optimiser step) on the ``B`` longest samples of the dataset (``RefSegDataset.lengths``: the most tokens,
  hence the most tiles and objects; no batch above the samples per rank is tried), after one unmeasured
  step at batch 1 that allocates the optimiser's state. The model is a throwaway build: the search runs in a
  spawned child process (:func:`find_batch_size`), so the run that then trains builds its model from an
  untouched random state and an empty device.
* :func:`plan_batch` and :func:`apply_batch_plan`: the accumulation that keeps the config's global batch
  (``batch_size x accumulative_counts x world size``), written into the config.

The safety margin. A trial only counts as a fit when it ran **and** its peak stays within the budget::

    peak_reserved + reserve <= (total - used_by_others) * (1 - headroom)

``peak_reserved``: ``torch.cuda.max_memory_reserved`` of the step (weights, optimiser state, gradients,
activations, allocator fragmentation). ``used_by_others``: device memory not held by this process's
allocator when the search starts (its CUDA context, other processes). ``headroom``: 0.10 by default, for
samples longer than the longest of the dataset searched with (another dataset, augmentation) and for
allocator fragmentation that grows over a long run.
``reserve``: memory the training run will hold that one trial step does not:

* the frozen-feature cache (``feature_cache`` ``'memory'`` / ``'disk'`` with a device-side LRU): each trial
  starts from an empty cache and so measures a step whose encoders run (the first epoch's), while training
  also keeps up to ``max_bytes`` of features on the device; the reserve is the cache's projected size
  (bytes per distinct input x distinct inputs per rank, at most ``max_bytes``; the repeats of a
  ``RefSegDataset`` record without augmentation count once) minus what the trial's step already put in;
* under DDP (``world_size > 1``): the gradient buckets, one more copy of the trainable gradients.

On a device without an out-of-memory signal (the CPU: the host kills the process instead) the search only
runs when ``max_batch`` bounds it; without one it reports that it cannot search and keeps the config's batch.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

__all__ = [
    "DEFAULT_HEADROOM",
    "AutoBatchError",
    "BatchPlan",
    "Measure",
    "SearchResult",
    "Trial",
    "apply_batch_plan",
    "batch_cfg_options",
    "find_batch_size",
    "is_out_of_memory",
    "plan_batch",
    "search_batch",
]

#: Fraction of the usable device memory a chosen batch leaves free (see the module docstring).
DEFAULT_HEADROOM = 0.10
#: Name of the record written into the work dir.
REPORT_NAME = "auto_batch.json"
GIB = 1024**3


class AutoBatchError(RuntimeError):
    """The batch search could not run (the child process failed, a bad option)."""


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error: ``torch.OutOfMemoryError``, or a ``RuntimeError``
    whose message says "out of memory" (CUDA errors raised outside the caching allocator, e.g. by cuBLAS or
    NCCL kernels)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


# ------------------------------------------------------------------------------------------------ core
@dataclass
class Measure:
    """What one successful trial step measured.

    Attributes:
        peak_bytes: peak device memory of the step (``None`` where the device cannot tell, e.g. the CPU).
        reserve_bytes: memory the training run will hold on top of the step (see the module docstring).
        details: anything else worth recording (e.g. the feature-cache projection).
    """

    peak_bytes: int | None = None
    reserve_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trial:
    """One trial of :func:`search_batch`.

    Attributes:
        batch: the micro-batch tried.
        outcome: ``'ok'`` (ran within the budget), ``'oom'`` (out of memory) or ``'over_budget'`` (ran,
            but ``peak_bytes + reserve_bytes`` is above the budget).
        peak_bytes / reserve_bytes: as :class:`Measure` (``None`` / 0 after an out-of-memory error).
        seconds: wall time of the trial (the step, and the out-of-memory unwinding if any).
        error: the first line of the out-of-memory message.
        details: :attr:`Measure.details`.
    """

    batch: int
    outcome: str
    peak_bytes: int | None
    reserve_bytes: int
    seconds: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """What :func:`search_batch` found.

    Attributes:
        largest_fit: the largest batch whose trial was ``'ok'``; ``None`` when none was (or no search ran).
        first_failure: the smallest batch that ran out of memory or over the budget (``None``: none did).
        trials: every trial, in the order run.
        reason: why the search stopped, in words.
        searched: False when no trial ran (no out-of-memory signal and no ``max_batch``).
    """

    largest_fit: int | None
    first_failure: int | None
    trials: list[Trial]
    reason: str
    searched: bool = True


def free_device_memory() -> None:
    """Collect garbage and return the CUDA caching allocator's free blocks (what runs between trials)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def search_batch(
    run_trial: Callable[[int], Measure],
    *,
    start: int = 1,
    max_batch: int | None = None,
    budget_bytes: int | None = None,
    bisect: bool = True,
    oom_signal: bool = True,
    cleanup: Callable[[], None] = free_device_memory,
    on_trial: Callable[[Trial], None] | None = None,
    candidates: list[int] | None = None,
) -> SearchResult:
    """Find the largest micro-batch ``B`` for which ``run_trial(B)`` runs within ``budget_bytes``.

    Args:
        run_trial: runs one training step at micro-batch ``B`` and returns its :class:`Measure`; raises
            an out-of-memory error (:func:`is_out_of_memory`) when ``B`` does not fit. Other errors
            propagate (after ``cleanup``).
        start: the first batch tried (halved down to 1 while it does not fit).
        max_batch: no batch above it is tried (``None``: no cap; then ``oom_signal`` must be True).
        budget_bytes: a trial whose ``peak_bytes + reserve_bytes`` exceeds it counts as a failure
            (``'over_budget'``); ``None``: only out-of-memory errors fail.
        bisect: after doubling, bisect between the largest fit and the first failure (to 1).
        oom_signal: whether the device raises out-of-memory errors (False for the CPU: then the search
            runs only with ``max_batch``).
        cleanup: frees memory after every trial.
        on_trial: called with each :class:`Trial` as soon as it is recorded (progress logging).
        candidates: the only batches tried (e.g. the divisors of the samples per rank and step, so that
            every batch tried can keep the global batch); ``None``: every batch from 1 to ``max_batch``.
            Doubling goes to the smallest candidate >= twice the fit (else the largest candidate), halving
            to the largest candidate <= half, bisection to the middle candidate between fit and failure.

    Raises:
        ValueError: ``start`` < 1 or ``max_batch`` < 1.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_batch is None and not oom_signal:
        return SearchResult(
            None,
            None,
            [],
            "this device gives no out-of-memory signal (the CPU) and no max batch bounds the search: "
            "cannot search",
            searched=False,
        )
    trials: list[Trial] = []

    def fits(batch: int) -> bool:
        t0 = time.perf_counter()
        try:
            measure = run_trial(batch)
        except BaseException as e:
            if not is_out_of_memory(e):
                cleanup()
                raise
            lines = str(e).strip().splitlines()
            error = lines[0] if lines else type(e).__name__
            trial = Trial(batch, "oom", None, 0, time.perf_counter() - t0, error)
            del e
        else:
            used = None if measure.peak_bytes is None else measure.peak_bytes + measure.reserve_bytes
            over = budget_bytes is not None and used is not None and used > budget_bytes
            trial = Trial(
                batch,
                "over_budget" if over else "ok",
                measure.peak_bytes,
                measure.reserve_bytes,
                time.perf_counter() - t0,
                details=measure.details,
            )
        cleanup()
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        return trial.outcome == "ok"

    allowed = None if candidates is None else sorted({int(c) for c in candidates if int(c) >= 1})
    if allowed is not None and max_batch is not None:
        allowed = [c for c in allowed if c <= max_batch]
    if allowed is not None and not allowed:
        raise ValueError(f"no candidate batch in {list(candidates or [])} is within 1..{max_batch}")

    def at_most(x: int) -> int | None:  # the largest allowed batch <= x
        if allowed is None:
            return x if x >= 1 else None
        below = [c for c in allowed if c <= x]
        return below[-1] if below else None

    def above(x: int) -> int | None:  # the next batch up from the fit x: 2x, else the largest allowed
        if allowed is None:
            return None if max_batch is not None and x >= max_batch else min(2 * x, max_batch or 2 * x)
        up = [c for c in allowed if c > x]
        return next((c for c in up if c >= 2 * x), up[-1] if up else None)

    def between(lo: int, hi: int) -> int | None:
        inner = list(range(lo + 1, hi)) if allowed is None else [c for c in allowed if lo < c < hi]
        return inner[(len(inner) - 1) // 2] if inner else None

    batch = at_most(start if max_batch is None else min(start, max_batch)) or allowed[0]
    lo: int | None = None  # largest fit
    hi: int | None = None  # smallest failure
    while lo is None:
        if fits(batch):
            lo = batch
        else:
            hi = batch
            smaller = at_most(min(batch // 2, batch - 1))
            if smaller is None:
                return SearchResult(None, batch, trials, f"batch {batch}, the smallest tried, does not fit")
            batch = smaller
    reason = ""
    while hi is None:
        batch = above(lo)
        if batch is None:
            reason = f"reached the largest batch allowed ({lo})"
            break
        if fits(batch):
            lo = batch
        else:
            hi = batch
    if hi is not None:
        while bisect and (mid := between(lo, hi)) is not None:
            if fits(mid):
                lo = mid
            else:
                hi = mid
        failed = next(t for t in trials if t.batch == hi)
        reason = f"batch {hi} " + ("ran out of memory" if failed.outcome == "oom" else "is over the budget")
    return SearchResult(lo, hi, trials, reason)


# ------------------------------------------------------------------------------------------- planning
@dataclass
class BatchPlan:
    """The micro-batch and accumulation a run uses, and how they relate to the config's.

    Attributes:
        batch_size / accumulative_counts: what to set (``train_dataloader.batch_size``,
            ``optim_wrapper.accumulative_counts``).
        global_batch: ``batch_size x accumulative_counts x world_size``.
        config_global_batch: the config's ``batch_size x accumulative_counts x world_size``.
        global_batch_kept: ``global_batch == config_global_batch``.
        note: what was given up, in words (empty when nothing was).
    """

    batch_size: int
    accumulative_counts: int
    global_batch: int
    config_global_batch: int
    global_batch_kept: bool
    note: str = ""


POLICIES = ("exact", "largest")


def plan_batch(
    largest_fit: int | None,
    config_batch: int,
    config_accumulation: int,
    world_size: int = 1,
    policy: str = "exact",
) -> BatchPlan:
    """The batch and accumulation for a device that fits at most ``largest_fit`` samples per step.

    The config's samples per rank and optimiser step are ``quota = config_batch x config_accumulation``.

    * ``policy='exact'`` (default): the largest divisor ``B`` of ``quota`` with ``B <= largest_fit``, and
      ``accumulative_counts = quota / B``: the global batch (hence the learning-rate recipe) is the config's
      exactly. A fit above ``quota`` gives ``B = quota`` (accumulation 1).
    * ``policy='largest'``: ``B = largest_fit`` and the accumulation nearest to ``quota / B`` (at least 1):
      the global batch changes when ``B`` does not divide ``quota`` (said in :attr:`BatchPlan.note`).

    ``largest_fit=None`` (no search, or nothing fit) keeps the config's values (and says so).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    for name, value in (("batch_size", config_batch), ("accumulative_counts", config_accumulation)):
        if int(value) < 1:
            raise ValueError(f"the config's {name} must be >= 1, got {value}")
    quota = int(config_batch) * int(config_accumulation)
    config_global = quota * world_size
    if largest_fit is None:
        kept = "no batch found: kept the config's"
        return BatchPlan(config_batch, config_accumulation, config_global, config_global, True, kept)
    if policy == "exact":
        batch = max(d for d in range(1, min(largest_fit, quota) + 1) if quota % d == 0)
        acc = quota // batch
        note = ""
        if batch < min(largest_fit, quota):
            note = (
                f"batch {largest_fit} fits but does not divide {quota} samples per rank and step "
                f"(batch_size {config_batch} x accumulative_counts {config_accumulation}): using its largest "
                f"divisor {batch} to keep the global batch {config_global}"
            )
        elif largest_fit > quota:
            note = (
                f"batch {largest_fit} fits, more than the config's {quota} samples per rank and step: using "
                f"{quota} with accumulative_counts 1 to keep the global batch {config_global}"
            )
        return BatchPlan(batch, acc, config_global, config_global, True, note)
    batch = largest_fit
    acc = max(1, round(quota / batch))
    global_batch = batch * acc * world_size
    kept = global_batch == config_global
    note = ""
    if not kept:
        note = (
            f"GLOBAL BATCH CHANGED: {batch} x accumulative_counts {acc} x {world_size} rank(s) = "
            f"{global_batch}, "
            f"the config's is {config_global} ({config_batch} x {config_accumulation} x {world_size}); "
            f"{batch} does not divide {quota}. Adjust the learning rate, or use the 'exact' policy"
        )
    return BatchPlan(batch, acc, global_batch, config_global, kept, note)


def batch_cfg_options(plan: BatchPlan, cfg: Config) -> list[str]:
    """The ``--cfg-options`` entries that apply ``plan`` to ``cfg`` (as :func:`apply_batch_plan` does)."""
    options = [
        f"train_dataloader.batch_size={plan.batch_size}",
        f"optim_wrapper.accumulative_counts={plan.accumulative_counts}",
    ]
    sampler = cfg.train_dataloader.get("sampler") or {}
    if "batch_size" in sampler:
        options.append(f"train_dataloader.sampler.batch_size={plan.batch_size}")
    return options


def apply_batch_plan(cfg: Config, plan: BatchPlan) -> None:
    """Set ``train_dataloader.batch_size`` and ``optim_wrapper.accumulative_counts`` of ``cfg`` (in place);
    a sampler with its own ``batch_size`` (``LengthGroupedSampler``, which sizes its mega-batches by it)
    gets the new batch too."""
    cfg.train_dataloader.batch_size = plan.batch_size
    cfg.optim_wrapper.accumulative_counts = plan.accumulative_counts
    sampler = cfg.train_dataloader.get("sampler") or {}
    if "batch_size" in sampler:
        cfg.train_dataloader.sampler.batch_size = plan.batch_size


# ----------------------------------------------------------------------------------------- Sa2VA steps
class Sa2VATrialRunner:
    """One real training step of ``cfg``'s model at any micro-batch (the ``run_trial`` of the search).

    Built once (model, dataset, optimiser); every call runs ``model.train_step`` on the ``B`` longest
    samples, collated by the config's collate function, with the config's optimiser wrapper (autocast,
    clipping, the optimiser's state allocated by a first step at batch 1 so that every measured step holds
    it, as every training step after the first does).

    Args:
        cfg: a loaded config (not changed).
        device: where to run (``cuda:N`` or ``cpu``).
        world_size: ranks the training will run on (samples per rank for the cache projection; the DDP
            gradient buckets are reserved when > 1).
    """

    def __init__(self, cfg: Config, device: torch.device, world_size: int = 1) -> None:
        import copy

        from mmengine.runner import Runner, set_random_seed

        from .builder import construct_model

        self.cfg = copy.deepcopy(cfg)
        self.device = device
        self.world_size = world_size
        self._tmp = tempfile.TemporaryDirectory(prefix="sa2va_batch_finder_")
        model_cfg = copy.deepcopy(self.cfg.model)
        cache_cfg = model_cfg.get("feature_cache")
        if isinstance(cache_cfg, dict) and cache_cfg.get("mode") == "disk":
            # The trials must run the encoders (a first-epoch step): never read the run's disk cache.
            model_cfg["feature_cache"] = dict(cache_cfg, dir=self._tmp.name)
        set_random_seed((self.cfg.get("randomness") or {}).get("seed") or 0)
        self.model = construct_model(model_cfg, self.cfg.filename or "config").to(device)
        self.model.train()
        loader_cfg = copy.deepcopy(self.cfg.train_dataloader)
        loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False, pin_memory=False)
        loader_cfg["sampler"] = dict(type="DefaultSampler", shuffle=False)
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        self.dataset = loader.dataset
        self.collate = loader.collate_fn
        lengths = getattr(self.dataset, "lengths", None)
        lengths = list(lengths) if lengths is not None else [0] * len(self.dataset)
        self.order = sorted(range(len(self.dataset)), key=lambda i: -lengths[i])
        self.samples_per_rank = math.ceil(len(self.dataset) / world_size)
        # Distinct inputs, for the cache projection: the repeats of a RefSegDataset record without
        # augmentation have the same pixels, hence one cache entry.
        records = getattr(self.dataset, "records", None)
        self._records = len(records) if records and getattr(self.dataset, "augment", None) is None else None
        self.distinct_per_rank = min(self.samples_per_rank, self._records or self.samples_per_rank)
        self._samples: dict[int, Any] = {}
        self.optim_wrapper = self._build_optim_wrapper()
        self.trainable_bytes = sum(
            p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad
        )

    def _build_optim_wrapper(self) -> Any:
        import copy

        from mmengine.optim import build_optim_wrapper

        ow_cfg = copy.deepcopy(self.cfg.optim_wrapper)
        ow_cfg["accumulative_counts"] = 1  # every trial step updates (the optimiser's state is real)
        if "max_consecutive_nonfinite" in ow_cfg:  # random weights may give NaN losses: never stop a trial
            ow_cfg["max_consecutive_nonfinite"] = 0
        return build_optim_wrapper(self.model, ow_cfg)

    def _batch(self, size: int) -> Any:
        items = []
        for index in self.order[:size]:
            if index not in self._samples:
                self._samples[index] = self.dataset[index]
            items.append(self._samples[index])
        return self.collate(items)

    def _clear_feature_cache(self) -> None:
        cache = getattr(self.model, "feature_cache", None)
        if cache is not None:
            store = cache.memory
            cache.memory = type(store)(store.max_bytes, store.device)

    def _step(self, size: int) -> None:
        self.model.train_step(self._batch(size), optim_wrapper=self.optim_wrapper)

    def __call__(self, size: int) -> Measure:
        """One training step at micro-batch ``size``; raises the out-of-memory error when it does not fit."""
        cuda = self.device.type == "cuda"
        try:
            if not self.optim_wrapper.optimizer.state:  # the optimiser's state, as after a first step
                self._clear_feature_cache()
                self._step(1)
            self._clear_feature_cache()
            if cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
            self._step(size)
            if cuda:
                torch.cuda.synchronize(self.device)
        except BaseException as e:
            if is_out_of_memory(e):
                # Drop the gradients and the optimiser state a step cut short may have left half-made.
                self.optim_wrapper = None
                self.model.zero_grad(set_to_none=True)
                self._clear_feature_cache()
                gc.collect()
                self.optim_wrapper = self._build_optim_wrapper()
            raise
        finally:
            self.model.zero_grad(set_to_none=True)
        details: dict[str, Any] = {}
        reserve = 0
        cache = getattr(self.model, "feature_cache", None)
        if cache is not None:
            held = int(cache.memory.bytes)
            batch = self.order[:size]
            distinct = len({i % self._records for i in batch}) if self._records else len(batch)
            projected = min(int(cache.memory.max_bytes), held * self.distinct_per_rank // max(distinct, 1))
            details.update(feature_cache_trial_bytes=held, feature_cache_projected_bytes=projected)
            if cuda and cache.memory.device is None:  # entries kept on the GPU
                reserve += max(0, projected - held)
        if self.world_size > 1:
            reserve += self.trainable_bytes
            details["ddp_bucket_bytes"] = self.trainable_bytes
        if not cuda:
            return Measure(None, reserve, details)
        details["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        return Measure(int(torch.cuda.max_memory_reserved(self.device)), reserve, details)

    def close(self) -> None:
        self._tmp.cleanup()


# ------------------------------------------------------------------------------------- whole search
def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _search_here(cfg: Config, options: dict[str, Any]) -> dict[str, Any]:
    """Build the trial runner on this process's device and search (what the child process runs)."""
    device = _device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    logger = _logger()
    runner = Sa2VATrialRunner(cfg, device, world_size=options["world_size"])
    max_batch = options.get("max_batch")
    if max_batch is None or max_batch > runner.samples_per_rank:
        logger.info(
            f"batch finder: the dataset has {runner.samples_per_rank} samples per rank; no batch above it "
            "is tried"
        )
        max_batch = runner.samples_per_rank
    budget = None
    memory: dict[str, Any] = {}
    if device.type == "cuda":
        free_device_memory()
        free, total = torch.cuda.mem_get_info(device)
        others = total - free - torch.cuda.memory_reserved(device)
        budget = int((total - others) * (1.0 - options["headroom"]))
        memory = dict(device_total_bytes=int(total), used_by_others_bytes=int(others), budget_bytes=budget)
        logger.info(
            f"batch finder on {torch.cuda.get_device_name(device)}: {total / GIB:.1f} GiB, "
            f"{others / GIB:.2f} GiB used outside this process's allocator, budget {budget / GIB:.1f} GiB "
            f"(headroom {options['headroom']:.0%})"
        )
    else:
        logger.info("batch finder on the CPU: no out-of-memory signal, the max batch bounds the search")

    def report(trial: Trial) -> None:
        peak = "-" if trial.peak_bytes is None else f"{trial.peak_bytes / GIB:.2f} GiB"
        logger.info(
            f"batch finder: batch {trial.batch}: {trial.outcome} (peak {peak}, {trial.seconds:.1f} s)"
        )

    try:
        result = search_batch(
            runner,
            start=options["start"],
            max_batch=max_batch,
            budget_bytes=budget,
            bisect=options["bisect"],
            oom_signal=device.type == "cuda",
            candidates=options.get("candidates"),
            on_trial=report,
        )
    finally:
        runner.close()
    return dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        max_batch_tried=max_batch,
        samples_per_rank=runner.samples_per_rank,
        trainable_bytes=runner.trainable_bytes,
        **memory,
        largest_fit=result.largest_fit,
        first_failure=result.first_failure,
        searched=result.searched,
        reason=result.reason,
        trials=[asdict(t) for t in result.trials],
    )


def _child_main(cfg: Config, options: dict[str, Any], out_path: str) -> None:
    MMLogger.get_instance("sa2va_batch_finder", log_level="INFO")
    found = _search_here(cfg, options)
    Path(out_path).write_text(json.dumps(found))


def find_batch_size(
    cfg: Config,
    *,
    max_batch: int | None = None,
    start: int = 1,
    headroom: float = DEFAULT_HEADROOM,
    bisect: bool = True,
    world_size: int = 1,
    in_child: bool = True,
    candidates: list[int] | None = None,
) -> dict[str, Any]:
    """Search the largest micro-batch of ``cfg`` on this process's device (``cuda:$LOCAL_RANK`` or CPU).

    Args:
        cfg: a loaded config (not changed).
        max_batch: no batch above it is tried (needed on the CPU, which gives no out-of-memory signal).
        start: the first batch tried.
        headroom: fraction of the usable device memory left free (see the module docstring).
        bisect: bisect between the largest fit and the first failure after doubling.
        world_size: ranks the training will run on.
        in_child: run the search in a spawned child process (default; the caller's model, random state and
            device memory stay untouched). False runs it here (tests of the search on the CPU).
        candidates: the only batches tried (see :func:`search_batch`).

    Returns:
        The search record: ``device``, the memory figures, ``largest_fit``, ``first_failure``,
        ``searched``, ``reason`` and ``trials`` (each a :class:`Trial` as a dict).

    Raises:
        AutoBatchError: the child process failed (its exit code; its own error is in its log above).
    """
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    options = dict(
        max_batch=max_batch,
        start=start,
        headroom=headroom,
        bisect=bisect,
        world_size=world_size,
        candidates=candidates,
    )
    if max_batch is None and _device().type != "cuda":
        _logger().warning(
            "batch finder: no GPU and no max batch: cannot search (the CPU gives no out-of-memory signal)"
        )
        return dict(
            device="cpu",
            max_batch_tried=None,
            largest_fit=None,
            first_failure=None,
            searched=False,
            reason="no GPU (the CPU gives no out-of-memory signal) and no max batch: cannot search",
            trials=[],
        )
    if not in_child:
        return _search_here(cfg, options)
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sa2va_batch_finder_") as tmp:
        out = Path(tmp) / "found.json"
        child = ctx.Process(target=_child_main, args=(cfg, options, str(out)), name="sa2va-batch-finder")
        child.start()
        child.join()
        if child.exitcode != 0 or not out.is_file():
            raise AutoBatchError(
                f"batch finder: the search process for {cfg.filename or 'the config'} failed with exit code "
                f"{child.exitcode} (its error is logged above)"
            )
        return json.loads(out.read_text())


def build_report(
    cfg: Config, found: dict[str, Any], plan: BatchPlan, *, policy: str, headroom: float, world_size: int
) -> dict[str, Any]:
    """The ``auto_batch.json`` record: the search ``found`` (as :func:`find_batch_size` returns it; a
    previous record may be passed: its plan fields are replaced), the plan, the ``--cfg-options`` and the
    environment."""
    return found | dict(
        config=cfg.filename,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        world_size=world_size,
        policy=policy,
        headroom=headroom,
        config_batch_size=int(cfg.train_dataloader.batch_size),
        config_accumulative_counts=int(cfg.optim_wrapper.get("accumulative_counts", 1)),
        batch_size=plan.batch_size,
        accumulative_counts=plan.accumulative_counts,
        global_batch=plan.global_batch,
        config_global_batch=plan.config_global_batch,
        global_batch_kept=plan.global_batch_kept,
        note=plan.note,
        cfg_options=batch_cfg_options(plan, cfg),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as JSON to ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` (>= 1), ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def search_and_plan(
    cfg: Config,
    *,
    max_batch: int | None = None,
    start: int = 1,
    headroom: float = DEFAULT_HEADROOM,
    policy: str = "exact",
    bisect: bool = True,
    world_size: int = 1,
    in_child: bool = True,
) -> tuple[dict[str, Any], BatchPlan]:
    """:func:`find_batch_size` then :func:`plan_batch`: the search record (with the plan, the
    ``--cfg-options`` and the environment, as :func:`build_report`) and the plan.

    Under ``policy='exact'`` only the divisors of the config's samples per rank and step
    (``batch_size x accumulative_counts``) are tried, up to that quota: a batch that does not divide it
    could not keep the global batch. ``policy='largest'`` tries every batch up to ``max_batch``. On the CPU
    nothing is tried without ``max_batch`` (every batch would "fit" until the host runs out of memory).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    config_batch = int(cfg.train_dataloader.batch_size)
    config_acc = int(cfg.optim_wrapper.get("accumulative_counts", 1))
    quota = config_batch * config_acc
    candidates = None
    if policy == "exact":
        candidates = divisors(quota)  # all <= quota: they bound the search (not the CPU's, see below)
    found = find_batch_size(
        cfg,
        max_batch=max_batch,
        start=start,
        headroom=headroom,
        bisect=bisect,
        world_size=world_size,
        in_child=in_child,
        candidates=candidates,
    )
    plan = plan_batch(found["largest_fit"], config_batch, config_acc, world_size, policy)
    report = build_report(cfg, found, plan, policy=policy, headroom=headroom, world_size=world_size)
    return report, plan


def _world_size(launcher: str) -> int:
    if launcher == "none":
        return 1
    if launcher == "pytorch":
        return int(os.environ.get("WORLD_SIZE", "1"))
    raise AutoBatchError(f"--auto-batch supports --launcher none and pytorch, not {launcher!r}")


def _init_process_group(cfg: Config, launcher: str) -> None:
    """Initialise the process group now, as the runner would (it then uses this one)."""
    import torch.distributed as dist
    from mmengine.dist import init_dist

    from .runner import init_gloo_without_gpu

    init_gloo_without_gpu()
    if not dist.is_initialized():
        init_dist(launcher, **dict((cfg.get("env_cfg") or {}).get("dist_cfg") or {}))


def recorded_plan(path: Path) -> BatchPlan:
    """The plan recorded in an ``auto_batch.json`` (for a resumed run).

    Raises:
        AutoBatchError: the file is not JSON or lacks a positive integer ``batch_size`` /
            ``accumulative_counts`` (the message names the file and the field).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AutoBatchError(f"{path}: cannot read the recorded batch ({e})") from e
    values = {}
    for key in ("batch_size", "accumulative_counts", "global_batch", "config_global_batch"):
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AutoBatchError(f"{path}: `{key}` must be a positive integer, got {value!r}")
        values[key] = value
    return BatchPlan(
        values["batch_size"],
        values["accumulative_counts"],
        values["global_batch"],
        values["config_global_batch"],
        values["global_batch"] == values["config_global_batch"],
        "recorded by the run being resumed",
    )


def auto_batch_for_training(
    cfg: Config,
    *,
    launcher: str = "none",
    resume: str | Path | None = None,
    max_batch: int | None = None,
    headroom: float = DEFAULT_HEADROOM,
    policy: str = "exact",
) -> BatchPlan:
    """``tools/train.py --auto-batch``: search, agree over the ranks, apply to ``cfg`` (launch options set).

    * A resumed run (``resume`` given) whose work dir holds an ``auto_batch.json`` continues with the batch
      recorded there, without a search: the run must keep the batch it started with.
    * Otherwise every rank searches on its own device, in a child process, at the same time; then the
      process group is initialised (the ranks meet there: a rank that finished first waits) and the
      smallest largest-fit over the ranks is used by all of them. No rank fits: the config's batch is kept
      (and the first step's out-of-memory message says what to change).
    * Rank 0 writes ``<work_dir>/auto_batch.json`` (:func:`build_report`, with each rank's ``largest_fit``).

    Raises:
        AutoBatchError: an unsupported launcher, a failed search process, a damaged recorded file.
    """
    logger = _logger()
    world_size = _world_size(launcher)
    rank = int(os.environ.get("RANK", "0")) if launcher == "pytorch" else 0
    path = Path(cfg.work_dir) / REPORT_NAME
    if resume is not None and path.is_file():
        plan = recorded_plan(path)
        config_global = (
            int(cfg.train_dataloader.batch_size)
            * int(cfg.optim_wrapper.get("accumulative_counts", 1))
            * world_size
        )
        if config_global != plan.config_global_batch:
            raise AutoBatchError(
                f"{path} was recorded for a global batch of {plan.config_global_batch}, the config now gives "
                f"{config_global}: remove the file to search again (the resumed run would change its batch)"
            )
        apply_batch_plan(cfg, plan)
        logger.info(
            f"--auto-batch with --resume: batch_size {plan.batch_size} x accumulative_counts "
            f"{plan.accumulative_counts} as recorded in {path} (no new search)"
        )
        if world_size > 1:
            _init_process_group(cfg, launcher)
        return plan
    report, plan = search_and_plan(
        cfg, max_batch=max_batch, headroom=headroom, policy=policy, world_size=world_size
    )
    per_rank = [report["largest_fit"]]
    if world_size > 1:
        from mmengine.dist import all_gather_object

        _init_process_group(cfg, launcher)
        gathered = all_gather_object((report["largest_fit"], report["reason"]))
        per_rank = [fit for fit, _ in gathered]
        fits = None if any(fit is None for fit in per_rank) else min(per_rank)
        plan = plan_batch(
            fits,
            report["config_batch_size"],
            report["config_accumulative_counts"],
            world_size,
            policy,
        )
        reason = "; ".join(f"rank {r}: {why}" for r, (_, why) in enumerate(gathered))
        found = {**report, "largest_fit": fits, "reason": reason}
        report = build_report(cfg, found, plan, policy=policy, headroom=headroom, world_size=world_size)
    report["largest_fit_per_rank"] = per_rank
    apply_batch_plan(cfg, plan)
    if rank == 0:
        if report["largest_fit"] is None:
            logger.warning(f"--auto-batch: {report['reason']}; keeping the config's batch")
        logger.info(
            f"--auto-batch: train_dataloader.batch_size={plan.batch_size}, optim_wrapper.accumulative_counts="
            f"{plan.accumulative_counts} (global batch {plan.global_batch}; the config's "
            f"{plan.config_global_batch}; largest fit per rank {per_rank})"
        )
        if plan.note:
            (logger.info if plan.global_batch_kept else logger.warning)(f"--auto-batch: {plan.note}")
        logger.info(f"--auto-batch: the search is recorded in {write_report(report, path)}")
    return plan
