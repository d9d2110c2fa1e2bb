"""Sa2VA's optimiser wrapper (subclass of mmengine 0.10.6 ``OptimWrapper``).

* bf16 autocast on CUDA, plain fp32 on CPU: mmengine's ``AmpOptimWrapper`` asserts a GPU, so one config
  could not serve both the CPU demo and GPU training. bf16 needs no loss scaling.
* Non-finite guard: an iteration whose loss is NaN/inf on ANY rank (a one-element all-reduce, so every
  rank decides the same) poisons its gradient-accumulation cycle: at the cycle's update point the
  optimiser step is skipped and the gradients are zeroed. A non-finite gradient norm (with a finite
  loss) skips the step the same way. ``max_consecutive_nonfinite`` such iterations in a row raise
  :class:`NonFiniteLossError` (``Sa2VARunner`` saves a checkpoint first).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn


class NonFiniteLossError(FloatingPointError):
    """Training produced too many non-finite losses in a row."""


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank of the default process group (one all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@OPTIM_WRAPPERS.register_module()
class DeviceAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` with ``torch.autocast(dtype)`` on CUDA and a non-finite loss/gradient guard.

    Args:
        dtype: autocast dtype name on CUDA (``'bfloat16'``); ``None`` disables autocast.
        max_consecutive_nonfinite: stop training (raise :class:`NonFiniteLossError`) after this many
            iterations in a row with a non-finite loss; ``0`` never stops (updates are still skipped).
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(
        self, *, dtype: str | None = "bfloat16", max_consecutive_nonfinite: int = 5, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if dtype is not None and dtype not in ("bfloat16", "float16"):
            raise ValueError(f"dtype must be 'bfloat16', 'float16' or None, got {dtype!r}")
        if dtype == "float16":
            raise ValueError("float16 needs loss scaling: use mmengine's AmpOptimWrapper for it")
        if max_consecutive_nonfinite < 0:
            raise ValueError(f"max_consecutive_nonfinite must be >= 0, got {max_consecutive_nonfinite}")
        self.amp_dtype = getattr(torch, dtype) if dtype is not None and torch.cuda.is_available() else None
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.consecutive_nonfinite = 0
        self.skipped_updates = 0
        self._cycle_poisoned = False

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model):
            if self.amp_dtype is None:
                yield
            else:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    yield

    def update_params(  # type: ignore[override]
        self, loss: torch.Tensor, step_kwargs: dict | None = None, zero_kwargs: dict | None = None
    ) -> None:
        """Backward ``loss``; step at the end of an accumulation cycle unless the cycle saw a non-finite loss.

        Backward runs even for a non-finite loss: DDP expects every forward to be followed by a backward.
        """
        iteration = self._inner_count  # 0-based index of this iteration (runner.iter)
        nonfinite = any_rank_true(not bool(torch.isfinite(loss.detach()).all()), loss.device)
        self.backward(self.scale_loss(loss))
        logger = MMLogger.get_current_instance()
        if nonfinite:
            self._cycle_poisoned = True
            self.consecutive_nonfinite += 1
            logger.warning(
                f"non-finite loss at iteration {iteration} (value {float(loss.detach().float())} on rank "
                f"{dist.get_rank() if dist.is_initialized() else 0} or another rank): this accumulation "
                f"cycle's update is skipped ({self.consecutive_nonfinite} in a row, stop at "
                f"{self.max_consecutive_nonfinite or 'never'})"
            )
        else:
            self.consecutive_nonfinite = 0
        if self.should_update():
            if self._cycle_poisoned:
                self.skipped_updates += 1
                self.message_hub.update_scalar("train/skipped_updates", float(self.skipped_updates))
            else:
                self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))
            self._cycle_poisoned = False
        if self.max_consecutive_nonfinite and self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} non-finite losses in a row (iterations "
                f"{iteration - self.consecutive_nonfinite + 1}..{iteration}); stopping. Lower the learning "
                f"rate / check the data of these iterations; optim_wrapper.max_consecutive_nonfinite="
                f"{self.max_consecutive_nonfinite}"
            )

    def step(self, **kwargs) -> None:
        """Clip gradients (if configured); skip ``optimizer.step`` when the gradient norm is not finite."""
        if self.clip_grad_kwargs:
            params = [
                p
                for g in self.optimizer.param_groups
                for p in g["params"]
                if p.requires_grad and p.grad is not None
            ]
            if params:
                norm = self.clip_func(params, **self.clip_grad_kwargs)
                if norm is not None:  # clip_grad_value_ returns None
                    norm = float(norm)
                    self.message_hub.update_scalar(f"train/{self.grad_name}", norm)
                    if not torch.isfinite(torch.tensor(norm)):
                        self.skipped_updates += 1
                        self.message_hub.update_scalar("train/skipped_updates", float(self.skipped_updates))
                        MMLogger.get_current_instance().warning(
                            f"non-finite gradient norm ({norm}) at iteration {self._inner_count - 1}: "
                            "optimiser step skipped"
                        )
                        return
        self.optimizer.step(**kwargs)
