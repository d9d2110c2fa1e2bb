"""The runner of ``--deepspeed`` runs (subclass of mmengine 0.10.6 ``FlexibleRunner``).

``tools/train.py --deepspeed ...`` (:func:`projects.sa2va.engine.launch.train`) builds this runner with
xtuner's ``DeepSpeedStrategy`` instead of the config's runner. What it keeps of
:class:`~projects.sa2va.engine.runner.Sa2VARunner`:

* the default hooks (global-batch line, per-iteration loss records, safe message-hub state);
* info logs from rank 0 only, and the quiet terminal (environment and config in the log file only);
* the model built by :func:`~projects.sa2va.engine.builder.construct_model`;
* the parameter schedulers fitted to the run (:class:`~projects.sa2va.engine.schedule.ScheduleFitMixin`);
* next to each DeepSpeed checkpoint directory ``iter_N.pth/`` (DeepSpeed's own format, which it needs to
  resume and which holds pickled objects), ``iter_N_trainable.pth``: the trainable tensors in this
  toolkit's format (``{"state_dict", "meta"}``, loadable with ``torch.load(weights_only=True)``, written
  atomically), gathered from the ZeRO-3 partitions when needed. ``tools/convert_to_hf.py``,
  ``tools/test.py`` and ``load_from`` read it.

The model is built at the end of ``__init__`` (mmengine builds it later, inside ``strategy.prepare``), for
two reasons: the random state is then the one the DDP runner builds its model from, so a config gives the
same initial weights under DDP and DeepSpeed; and it is built whole, without transformers' ZeRO-3
``deepspeed.zero.Init`` (which xtuner's strategy switches on through ``HfDeepSpeedConfig``, and under which
the weight loaders would write into partitioned parameters). ``deepspeed.initialize`` partitions it then.
Under ZeRO-3, every module also gets the backward counters of DeepSpeed's hooks up front (see
:func:`_init_zero3_backward_counters`), and the frozen-feature cache fingerprints the encoders while their
weights are still whole (``FrozenFeatureCache.pin_fingerprints``).

Not kept: the non-finite-loss guard and the exact-resume random state (DeepSpeed's optimiser wrapper and
checkpoints replace them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator

import torch
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import FlexibleRunner

from ..checkpoint.safe_load import trainable_file_name
from .builder import construct_model
from .runner import log_header, quiet_console, register_default_hooks
from .schedule import ScheduleFitMixin
from .state import atomic_write_bytes


def _quiet_other_ranks(logger: logging.Logger, rank: int) -> None:
    """Console handlers of ranks > 0 show errors only (as mmengine does when the rank is known early)."""
    if rank == 0:
        return
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.ERROR)


@contextlib.contextmanager
def _without_hf_zero3_init() -> Iterator[None]:
    """Hide xtuner's ``HfDeepSpeedConfig`` from transformers (4.48: the module-level weak reference that
    ``is_deepspeed_zero3_enabled`` reads), so ``_from_config`` builds whole parameters."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _zero_stage(strategy) -> int:
    """The ZeRO stage of a DeepSpeed strategy's config (0 when absent)."""
    zero = getattr(strategy, "config", {}).get("zero_optimization") or {}
    return int(zero.get("stage", 0))


def _init_zero3_backward_counters(model: torch.nn.Module) -> None:
    """Give every module the backward counters ZeRO-3's hooks otherwise create in the module's first forward.

    DeepSpeed 0.18.9 registers hooks on children before parents and attaches its backward-hook classes to a
    module only when ``hasattr(module, "post_bwd_fn")`` is false. peft 0.21's ``ModulesToSaveWrapper``
    (the trained ``lm_head`` / ``embed_tokens`` copies of the LoRA recipe) forwards unknown attributes to
    its active copy, so the wrapper reuses the copy's class, whose first use (the wrapper's hook runs before
    the copy's) fails: ``'Linear' object has no attribute 'ds_grads_remaining'``. With the counters present
    the wrapper's extra count is harmless: the counters are reset on every forward.
    """
    for module in model.modules():
        for name in ("ds_grads_remaining", "applied_pre_backward_ref_cnt"):
            if name not in module.__dict__:
                setattr(module, name, 0)


@RUNNERS.register_module()
class Sa2VAFlexibleRunner(ScheduleFitMixin, FlexibleRunner):
    """``FlexibleRunner`` for ``--deepspeed``: Sa2VA's hooks, rank-0 logs, a weights-only file."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _quiet_other_ranks(self.logger, self.rank)
        if isinstance(self.model, dict):
            with _without_hf_zero3_init():
                self.model = construct_model(self.model, self.cfg.filename or "config")
        if isinstance(self.model, torch.nn.Module) and _zero_stage(self.strategy) == 3:
            _init_zero3_backward_counters(self.model)
            cache = getattr(self.model, "feature_cache", None)
            if cache is not None:
                cache.pin_fingerprints(self.model.frozen_encoders())  # before ZeRO-3 partitions them

    def _log_env(self) -> None:
        log_file = quiet_console(self.logger)
        super()._log_env()
        log_header(self, log_file)

    def register_hooks(self, default_hooks: dict | None = None, custom_hooks: list | None = None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        register_default_hooks(self)

    def _trainable_state(self) -> dict[str, torch.Tensor] | None:
        """The model's state dict (trainable tensors), gathered under ZeRO-3; on rank 0, else None."""
        engine = self.model
        module = getattr(engine, "module", engine)
        gather: contextlib.AbstractContextManager = contextlib.nullcontext()
        if getattr(engine, "zero_optimization_partition_weights", lambda: False)():
            import deepspeed

            params = [p for p in module.parameters() if p.requires_grad]
            gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with gather:
            if not is_main_process():
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """DeepSpeed's checkpoint directory, then ``<name>_trainable.pth`` (every rank must call this)."""
        super().save_checkpoint(out_dir, filename, *args, **kwargs)
        state = self._trainable_state()
        if state is None:
            return
        buf = io.BytesIO()
        meta = dict(iter=self.iter + 1, epoch=self.epoch, deepspeed_checkpoint=filename)
        torch.save({"state_dict": state, "meta": meta}, buf)
        path = os.path.join(out_dir, trainable_file_name(filename))
        atomic_write_bytes(path, buf.getvalue())
        self.logger.info(f"trainable tensors ({len(state)}) written to {path}")
