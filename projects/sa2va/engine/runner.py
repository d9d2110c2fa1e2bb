"""mmengine ``Runner`` with the changes Sa2VA training needs (subclass of mmengine 0.10.6 ``Runner``).

* CPU ranks under torchrun: mmengine's ``init_dist`` always calls ``torch.cuda.set_device``; on a
  machine without a GPU the process group is initialised here with gloo instead.
* Checkpoints hold trainable tensors only: loading (``load_from`` / ``--resume``) goes through
  ``Sa2VAModel.load_state_dict`` with strict key checking and ``torch.load(weights_only=True)``,
  not through mmengine's non-strict loader.
* Crash-safe checkpoints: written to a temporary file in the same directory and renamed
  (``os.replace``); the ``last_checkpoint`` pointer too. ``--resume auto`` falls back to the newest
  intact ``iter_N.pth`` when the pointer is missing, cut or stale or names a damaged file (warning);
  partial files of a killed save are removed at start.
* Exact resume: a resume whose run length or batches per epoch no longer fit the checkpoint's is refused
  (:func:`~projects.sa2va.engine.schedule.check_resumed_run`); each rank's random state is saved with the
  checkpoint and restored by
  :class:`~projects.sa2va.engine.loops.Sa2VATrainLoop` at the matching point.
* :class:`~projects.sa2va.engine.optim.NonFiniteLossError` (too many NaN/inf losses in a row) saves a
  checkpoint (the weights of the last update with a finite loss, marked ``nonfinite_stop`` in its meta,
  which ``--resume auto`` passes over) before it propagates; the message says whether those weights are
  finite and names the previous checkpoint from before the non-finite losses to resume from instead.
* :class:`~projects.sa2va.engine.hooks.GlobalBatchLoggerHook`,
  :class:`~projects.sa2va.engine.hooks.LossRecorderHook` and
  :class:`~projects.sa2va.engine.hooks.DataWaitHook` are registered unless the config has them.
* The model is built by :func:`~projects.sa2va.engine.builder.construct_model`, the construction step of
  the one model builder (test, predict, export and the demo rebuild it the same way).
* The parameter schedulers are fitted to the run when the training loop is built (run fractions
  resolved, a schedule that ends before the run refused; :mod:`projects.sa2va.engine.schedule`).
* A quiet terminal: the environment report, the full config and the hook order that mmengine logs at
  start go to the log file only (:func:`quiet_console`); the terminal gets one header line naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.dist import all_gather_object, broadcast_object_list, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint.safe_load import load_checkpoint_file, trainable_state_from_checkpoint
from .builder import construct_model
from .hooks import DataWaitHook, GlobalBatchLoggerHook, LossRecorderHook, SafeMessageHubHook
from .optim import NonFiniteLossError
from .schedule import ScheduleFitMixin, check_resumed_run
from .state import (
    CKPT_NAME,
    NONFINITE_FROM_KEY,
    NONFINITE_STOP_KEY,
    POINTER_NAME,
    atomic_write_text,
    capture_rng_state,
    decode_message_hub,
    find_resumable_checkpoint,
    nonfinite_stop_message,
    remove_stale_partials,
    restore_rng_state,
)

DEFAULT_HOOKS = (GlobalBatchLoggerHook, LossRecorderHook, SafeMessageHubHook, DataWaitHook)


def init_gloo_without_gpu() -> None:
    """Under torchrun on a machine without a GPU, initialise the process group with gloo here: mmengine's
    ``init_dist`` (0.10.6) always calls ``torch.cuda.set_device``; an existing group is used as it is."""
    if "RANK" in os.environ and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        os.environ.setdefault("LOCAL_RANK", "0")


#: Start-of-run messages of mmengine 0.10.6 (``Runner`` / ``FlexibleRunner``) and its upstream notices that
#: :func:`quiet_console` keeps off the terminal (they stay in the log file): the environment report, the
#: whole config, the hook order, and notices about mmengine's own classes (deprecations, no metainfo, SyncBN).
FILE_ONLY_PREFIXES = (
    "\n" + "-" * 60 + "\nSystem environment:",
    "Config:\n",
    "Hooks will be executed in the following order:",
    '"FileClient" will be deprecated in future.',
    '"HardDiskBackend" is the alias of "LocalBackend"',
    "Dataset RefSegDataset has no metainfo.",
    "Distributed training is not used, all SyncBatchNorm (SyncBN) layers",
)


class _FileOnly(logging.Filter):
    """Drop the records whose message starts with one of :data:`FILE_ONLY_PREFIXES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(FILE_ONLY_PREFIXES)


def quiet_console(logger: logging.Logger) -> str | None:
    """Keep the :data:`FILE_ONLY_PREFIXES` messages off ``logger``'s terminal handlers (file handlers keep
    them); returns the log file's path, or None without one. Safe to call more than once."""
    log_file = None
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            log_file = handler.baseFilename
        elif isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, _FileOnly) for f in handler.filters
        ):
            handler.addFilter(_FileOnly())
    return log_file


def log_header(runner: Any, log_file: str | None) -> None:
    """One line for the terminal: config, work dir, seed, processes, and where the full report is."""
    where = f"; environment, full config and hook order in {log_file}" if log_file else ""
    launcher = getattr(runner, "launcher", None)  # FlexibleRunner (0.10.6) has none
    runner.logger.info(
        f"config {runner.cfg.filename or '(none)'}, work dir {runner.work_dir}, seed {runner.seed}, "
        f"{runner.world_size} process(es){f', launcher {launcher}' if launcher else ''}{where}"
    )


def register_default_hooks(runner: Any) -> None:
    """Register the :data:`DEFAULT_HOOKS` the config does not already have."""
    for cls in DEFAULT_HOOKS:
        if not any(isinstance(h, cls) for h in runner.hooks):
            runner.register_hook(cls())


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@RUNNERS.register_module()
class Sa2VARunner(ScheduleFitMixin, Runner):
    """``Runner`` for Sa2VA: gloo on CPU, strict trainable-only loading, atomic saves, exact resume."""

    def setup_env(self, env_cfg: dict) -> None:
        if self._distributed:
            init_gloo_without_gpu()
        super().setup_env(env_cfg)

    def _log_env(self, env_cfg: dict) -> None:
        log_file = quiet_console(self.logger)
        super()._log_env(env_cfg)
        log_header(self, log_file)

    def build_model(self, model: torch.nn.Module | dict) -> torch.nn.Module:
        """A config dict through :func:`~projects.sa2va.engine.builder.construct_model` (the runner has
        seeded already); a built module as it is."""
        if isinstance(model, dict):
            return construct_model(model, self.cfg.filename or "config")
        return super().build_model(model)

    def register_hooks(self, default_hooks: dict | None = None, custom_hooks: list | None = None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        register_default_hooks(self)

    # ----------------------------------------------------------------------------------------- loading
    def load_checkpoint(
        self,
        filename: str,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        revise_keys: list | None = None,
    ) -> dict:
        """Load trainable tensors from ``filename`` into the model; any key mismatch is an error."""
        checkpoint = load_checkpoint_file(filename, map_location=map_location)
        if isinstance(checkpoint.get("message_hub"), dict):
            checkpoint["message_hub"] = decode_message_hub(checkpoint["message_hub"])
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = trainable_state_from_checkpoint(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except KeyError as e:
            raise KeyError(f"{filename}: {e}") from None
        self._has_loaded = True
        self._loaded_meta = checkpoint.get("meta", {}) if isinstance(checkpoint.get("meta"), dict) else {}
        self.logger.info(f"Loaded {len(state)} trainable tensors from {filename}")
        return checkpoint

    def load_or_resume(self) -> None:
        """As mmengine's, but ``resume=True`` without a path picks the newest *complete* checkpoint.

        Rank 0 chooses (see :func:`~projects.sa2va.engine.state.find_resumable_checkpoint`) and
        broadcasts the path, so every rank resumes from the same file (the work dir must be shared).
        """
        if self._has_loaded:
            return
        if is_main_process():
            remove_stale_partials(self.work_dir)
        if self._resume and self._load_from is None:
            choice = [find_resumable_checkpoint(self.work_dir) if is_main_process() else None]
            broadcast_object_list(choice)
            if choice[0] is None:
                self.logger.info(f"resume=auto: no checkpoint in {self.work_dir}; training from scratch")
            else:
                self.logger.info(f"resume=auto: resuming from {choice[0]}")
                self._load_from = choice[0]
            if choice[0] is None:
                self._resume = False
        elif not self._resume and is_main_process():
            earlier = sorted(p.name for p in Path(self.work_dir).glob("*.pth") if CKPT_NAME.match(p.name))
            earlier += sorted(p.name for p in Path(self.work_dir).glob("best_*.pth"))
            if earlier:
                shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
                self.logger.warning(
                    f"{self.work_dir} already holds {len(earlier)} checkpoint(s) of an earlier run "
                    f"({shown}): this run starts fresh and writes beside them (--resume auto would continue "
                    "that run; another --work-dir keeps the runs apart)"
                )
        super().load_or_resume()

    def resume(
        self,
        filename: str,
        resume_optimizer: bool = True,
        resume_param_scheduler: bool = True,
        map_location: str | Callable = "default",
    ) -> None:
        self._loaded_meta = {}
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        check_resumed_run(self, filename, self._loaded_meta, self.logger)
        states = self._loaded_meta.get("rng_states")
        self._resumed_rng = None
        if states is None:
            self.logger.warning(f"{filename} holds no random state: random draws after resume will differ")
        elif len(states) != self.world_size:
            self.logger.warning(
                f"{filename} was saved by {len(states)} ranks, resumed by {self.world_size}: random state "
                "not restored (data order and model state are)"
            )
        else:
            self._resumed_rng = states[self.rank]

    def pop_resumed_rng_state(self) -> Callable[[], None] | None:
        """A function restoring this rank's resumed random state (once), or None without a resume."""
        state, self._resumed_rng = getattr(self, "_resumed_rng", None), None
        return None if state is None else (lambda: restore_rng_state(state))

    # ------------------------------------------------------------------------------------------ saving
    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args: dict | None = None,
    ) -> None:
        """mmengine's save, made atomic; adds every rank's random state. Call on every rank (collective)."""
        rng_states = all_gather_object(capture_rng_state())
        if not is_main_process():
            return
        meta = dict(meta or {})
        meta.update(rng_states=rng_states, world_size=self.world_size)
        ipe = getattr(self._train_loop, "iters_per_epoch", None)
        if ipe is not None:  # checked on resume (`check_resumed_run`)
            meta.update(iters_per_epoch=int(ipe))
        local = file_client_args is None and backend_args is None and "://" not in str(out_dir)
        if not local:
            self.logger.warning(f"checkpoint to {out_dir} is not a local path: saved non-atomically")
            super().save_checkpoint(
                out_dir,
                filename,
                file_client_args,
                save_optimizer,
                save_param_scheduler,
                meta,
                by_epoch,
                backend_args,
            )
            return
        final = os.path.join(out_dir, filename)
        tmp_name = f".{filename}.partial-{os.getpid()}"
        tmp = os.path.join(out_dir, tmp_name)
        try:
            super().save_checkpoint(
                out_dir, tmp_name, None, save_optimizer, save_param_scheduler, meta, by_epoch, None
            )
            _fsync_file(tmp)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if CKPT_NAME.match(filename):
            # CheckpointHook rewrites the same text right after this (non-atomically); a kill in that
            # window leaves a cut pointer, which find_resumable_checkpoint tolerates.
            atomic_write_text(os.path.join(self.work_dir, POINTER_NAME), final)

    # ---------------------------------------------------------------------------------------- training
    def train(self) -> torch.nn.Module:
        try:
            return super().train()
        except NonFiniteLossError as e:
            step = self.iter + 1  # the failing iteration was consumed (its update skipped)
            filename = f"iter_{step}.pth"
            # Checkpoints from the first non-finite iteration on hold the weights that diverged.
            first = e.first_iteration if e.first_iteration is not None else self.iter
            earlier = (
                find_resumable_checkpoint(self.work_dir, before_step=first) if is_main_process() else None
            )
            meta = {"epoch": self.epoch, "iter": step, NONFINITE_STOP_KEY: True, NONFINITE_FROM_KEY: first}
            self.save_checkpoint(self.work_dir, filename, meta=meta, by_epoch=False)
            if is_main_process():
                self.logger.error(self._nonfinite_message(os.path.join(self.work_dir, filename), earlier))
            raise

    def _nonfinite_message(self, saved: str, earlier: str | None) -> str:
        """What the non-finite stop saved and where to go on from: never the diverged weights."""
        model = self.model.module if is_model_wrapper(self.model) else self.model
        return nonfinite_stop_message(model, saved, earlier)
