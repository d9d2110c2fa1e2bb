"""Learning-rate schedules that follow the length of the run (mmengine 0.10.6 parameter schedulers).

mmengine configs give a scheduler's ``begin`` / ``end`` in epochs or iterations, computed when the config
file is read. A schedule written as ``end=max_epochs`` in a base config therefore keeps the base's value
when a leaf or ``--cfg-options train_cfg.max_epochs=3`` changes the run: the cosine then ends after the
first epoch and the learning rate stays at ``eta_min`` (0 in the reference recipe) for the rest, and
nothing says so.

Two rules, applied by both runners when the training loop is built (the run's iteration count is then
known, and the schedulers are still configs):

* :func:`resolve_run_fractions`: a scheduler config with ``of_run=True`` gives ``begin`` / ``end`` as
  fractions of the run (0 to 1; ``end`` defaults to 1). They become iterations, ``int(f * max_iters)``
  (mmengine's epoch-to-iteration rounding, so an integer number of epochs gives the iterations the
  epoch-based form gives). A scheduler that then spans fewer than 2 iterations (a warm-up of 5 % of a
  39-iteration run) is left out, and the log says so (:data:`MIN_SPAN`).
  ``_base_/schedule_reference.py`` is written this way.
* :func:`check_schedule_covers_run`: the learning-rate schedulers must reach the end of the run. One that
  ends earlier is an error naming both ends; one that ends later is a warning (the cosine is cut short).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.registry import PARAM_SCHEDULERS
from mmengine.runner import BaseLoop

__all__ = [
    "MIN_SPAN",
    "RUN_FRACTION_KEY",
    "ScheduleError",
    "ScheduleFitMixin",
    "built_schedulers",
    "check_resumed_run",
    "check_schedule_covers_run",
    "fit_schedule_to_loop",
    "resolve_run_fractions",
]

#: The scheduler-config key that marks ``begin`` / ``end`` as fractions of the run.
RUN_FRACTION_KEY = "of_run"
#: The fewest iterations a resolved scheduler spans. mmengine's ``LinearLR`` over one iteration has
#: ``total_iters = end - begin - 1 = 0``: it sets ``start_factor x lr`` and never raises it again, and the
#: cosine after it then starts from that value (a 5 % warm-up of a 20-39 iteration run would hold the
#: learning rate at 1e-5 of its value for the whole run).
MIN_SPAN = 2


class ScheduleError(ValueError):
    """A learning-rate schedule that does not fit the run; the message names both ends."""


def _configs(schedulers: Any) -> list[Any]:
    if isinstance(schedulers, dict) and "type" not in schedulers:  # one list per optimiser
        return [s for group in schedulers.values() for s in _configs(group)]
    return list(schedulers) if isinstance(schedulers, Sequence) else [schedulers]


def _type_name(cfg: dict) -> str:
    kind = cfg.get("type")
    return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))


def resolve_run_fractions(schedulers: Any, max_iters: int, logger: logging.Logger | None = None) -> Any:
    """Return ``schedulers`` (a config, list of configs or dict of lists) with run fractions resolved.

    Args:
        schedulers: mmengine ``param_scheduler`` config(s); built schedulers are passed through.
        max_iters: iterations of the run (the built training loop's ``max_iters``).
        logger: where a left-out scheduler is reported.

    Raises:
        ScheduleError: a fraction outside 0..1, or ``begin`` after ``end``.
    """
    if isinstance(schedulers, dict) and "type" not in schedulers:
        return {k: resolve_run_fractions(v, max_iters, logger) for k, v in schedulers.items()}
    if not isinstance(schedulers, Sequence):
        return resolve_run_fractions([schedulers], max_iters, logger)[0]
    out = []
    for cfg in schedulers:
        if not isinstance(cfg, dict) or not cfg.get(RUN_FRACTION_KEY, False):
            out.append(cfg)
            continue
        cfg = copy.deepcopy(dict(cfg))
        cfg.pop(RUN_FRACTION_KEY)
        cfg.pop("convert_to_iter_based", None)
        begin, end = float(cfg.get("begin", 0.0)), float(cfg.get("end", 1.0))
        if not 0.0 <= begin <= end <= 1.0:
            raise ScheduleError(
                f"param_scheduler {_type_name(cfg)} with {RUN_FRACTION_KEY}=True: begin and end are "
                f"fractions of the run, 0 <= begin <= end <= 1; got begin={begin}, end={end}"
            )
        cfg.update(by_epoch=False, begin=int(begin * max_iters), end=int(end * max_iters))
        if cfg["end"] - cfg["begin"] < MIN_SPAN:
            if logger is not None:
                logger.info(
                    f"param_scheduler {_type_name(cfg)} over {begin:g}-{end:g} of the run: "
                    f"{cfg['end'] - cfg['begin']} of the {max_iters} iterations this run trains, fewer than "
                    f"{MIN_SPAN}; left out"
                )
            continue
        out.append(cfg)
    return out


def built_schedulers(runner: Any) -> list[Any]:
    """The runner's built parameter schedulers as one list (mmengine keeps a dict of lists for several
    optimisers)."""
    scheds = runner.param_schedulers or []
    if isinstance(scheds, dict):
        return [s for group in scheds.values() for s in group]
    return list(scheds)


def _is_lr(cfg: dict) -> bool:
    kind = cfg.get("type")
    cls = PARAM_SCHEDULERS.get(kind) if isinstance(kind, str) else kind
    return isinstance(cls, type) and issubclass(cls, LRSchedulerMixin)


def _end_iteration(cfg: dict, max_iters: int, iters_per_epoch: int) -> int:
    """The iteration at which a scheduler config stops changing the learning rate."""
    if "end" not in cfg:
        return max_iters  # mmengine's default end: the run's
    end = cfg["end"]
    if cfg.get("by_epoch", True):
        return int(end * iters_per_epoch)
    return int(end)


def check_schedule_covers_run(
    schedulers: Any, max_iters: int, iters_per_epoch: int, logger: logging.Logger | None = None
) -> None:
    """Check that the learning-rate schedulers end where the run ends.

    Args:
        schedulers: resolved ``param_scheduler`` config(s) (built schedulers are not checked).
        max_iters: iterations of the run.
        iters_per_epoch: training-loader batches per epoch (converts epoch-based ends).
        logger: where a schedule that ends after the run is reported.

    Raises:
        ScheduleError: every learning-rate scheduler ends before the run does; the message names the
            iteration each ends at, the run's length and how to fix it.
    """
    ends = [
        (_type_name(c), _end_iteration(c, max_iters, iters_per_epoch))
        for c in _configs(schedulers)
        if isinstance(c, dict) and _is_lr(c)
    ]
    if not ends:
        return
    last = max(e for _, e in ends)
    listed = ", ".join(f"{name} at {e}" for name, e in ends)
    if last < max_iters:
        raise ScheduleError(
            f"param_scheduler ends at iteration {last} ({listed}) but the run trains {max_iters} iterations "
            f"({iters_per_epoch} per epoch): the learning rate would stay at its final value for the last "
            f"{max_iters - last}. A schedule written in epochs keeps the value it had when the config was "
            f"read; give its `end` the run's length, or write `begin`/`end` as fractions of the run with "
            f"{RUN_FRACTION_KEY}=True (as projects/sa2va/configs/_base_/schedule_reference.py does)."
        )
    if last > max_iters and logger is not None:
        logger.warning(
            f"param_scheduler ends at iteration {last} ({listed}), after the run's {max_iters}: "
            f"the learning rate does not reach the schedule's final value"
        )


def fit_schedule_to_loop(schedulers: Any, loop: Any, logger: logging.Logger | None = None) -> Any:
    """:func:`resolve_run_fractions` then :func:`check_schedule_covers_run` for a built training loop.

    Args:
        schedulers: the runner's ``param_schedulers`` while still configs (``None``: no schedule).
        loop: the built training loop (``max_iters``; ``iters_per_epoch`` or its dataloader's length).
        logger: the runner's logger.

    Returns:
        the resolved scheduler configs, for the runner to build.
    """
    if schedulers is None:
        return None
    max_iters = int(loop.max_iters)
    iters_per_epoch = int(getattr(loop, "iters_per_epoch", None) or len(loop.dataloader))
    schedulers = resolve_run_fractions(schedulers, max_iters, logger)
    check_schedule_covers_run(schedulers, max_iters, iters_per_epoch, logger)
    return schedulers


class ScheduleFitMixin:
    """For a runner class (before mmengine's ``Runner`` / ``FlexibleRunner`` in its bases): the parameter
    schedulers are fitted to the run (:func:`fit_schedule_to_loop`) as soon as the training loop is built,
    while they are still configs (both runners build the loop before the schedulers)."""

    def build_train_loop(self, loop: BaseLoop | dict) -> BaseLoop:
        fresh = not isinstance(loop, BaseLoop)
        loop = super().build_train_loop(loop)
        if fresh:
            self.param_schedulers = fit_schedule_to_loop(self.param_schedulers, loop, self.logger)
        return loop


def check_resumed_run(runner: Any, filename: str, meta: dict, logger: logging.Logger | None = None) -> None:
    """After a resume: refuse a run whose length or batches no longer fit the checkpoint's.

    * The optimiser and the parameter schedulers continue from the checkpoint, so a run made longer on
      resume (``train_cfg.max_epochs`` raised) would keep the old schedule: its learning rate would stay
      at the final value for the added iterations. Refused when the restored learning-rate schedulers end
      before the run does (not with a :class:`~projects.sa2va.engine.time_budget.TimeBudgetHook`, which
      re-plans the ends itself); a schedule that ends after the run (a shortened run) is a warning.
    * The resumed position in the data order is ``iteration = epoch x batches per epoch + offset``: with
      another number of batches per epoch on the same number of ranks (batch size or dataset changed) it
      points elsewhere. Refused; with another number of ranks, a warning.

    Args:
        runner: the runner, its training loop and parameter schedulers built and restored.
        filename: the checkpoint (named in the messages).
        meta: the checkpoint's ``meta`` (``iters_per_epoch`` and ``world_size`` when it recorded them).

    Raises:
        ScheduleError: naming the checkpoint, both lengths and what to do instead.
    """
    loop = runner.train_loop
    max_iters = int(loop.max_iters)
    ipe = getattr(loop, "iters_per_epoch", None)
    saved_ipe, saved_world = meta.get("iters_per_epoch"), meta.get("world_size")
    if ipe is not None and saved_ipe is not None and int(saved_ipe) != int(ipe):
        text = (
            f"{filename} was trained with {saved_ipe} batches per epoch, this run has {ipe}: the resumed "
            f"position in the data order (iteration {runner.iter}) would point elsewhere"
        )
        if saved_world is not None and int(saved_world) == runner.world_size:
            raise ScheduleError(
                f"{text}. The batch size or the dataset changed: resume with the ones it was trained "
                f"with, or start a new run from its weights (`load_from`, without --resume)."
            )
        if logger is not None:
            logger.warning(f"{text} (saved by {saved_world} ranks, resumed by {runner.world_size})")
    from .time_budget import TimeBudgetHook  # it imports this module

    if any(isinstance(h, TimeBudgetHook) for h in runner.hooks):
        return
    ends = [
        int(s.end) for s in built_schedulers(runner) if isinstance(s, LRSchedulerMixin) and not s.by_epoch
    ]
    if not ends:
        return
    last = max(ends)
    if last < max_iters:
        raise ScheduleError(
            f"{filename}: its learning-rate schedule ends at iteration {last}, this run trains to "
            f"{max_iters}. A resumed run continues the checkpoint's optimiser and schedule, so the learning "
            f"rate would stay at its final value for the last {max_iters - last} iterations. Resume with "
            f"the run length it was trained for, or start a new run from its weights (`load_from`, without "
            f"--resume) with a schedule over the new length."
        )
    if last > max_iters and logger is not None:
        logger.warning(
            f"{filename}: its learning-rate schedule ends at iteration {last}, after this run's {max_iters}: "
            f"the learning rate will not reach the schedule's final value"
        )
