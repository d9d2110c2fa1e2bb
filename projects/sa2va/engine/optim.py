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
    """Training produced too many non-finite losses in a row.

    Attributes:
        first_iteration / last_iteration: 0-based ``runner.iter`` of the first and last non-finite
            iteration of the run of losses that stopped training (None when not known).
    """

    def __init__(
        self, message: str, *, first_iteration: int | None = None, last_iteration: int | None = None
    ) -> None:
        super().__init__(message)
        self.first_iteration = first_iteration
        self.last_iteration = last_iteration


def any_rank_flags(flags: torch.Tensor, device: torch.device) -> list[bool]:
    """Element-wise OR of the bool vector ``flags`` ``[K]`` over the ranks (one all-reduce, one read-back)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [bool(f) for f in flags.tolist()]
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = flags.to(device=device, dtype=torch.float32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [v > 0 for v in t.tolist()]


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
        name = self.autocast_dtype_name(dtype, torch.cuda.is_available())
        if max_consecutive_nonfinite < 0:
            raise ValueError(f"max_consecutive_nonfinite must be >= 0, got {max_consecutive_nonfinite}")
        self.amp_dtype = getattr(torch, name) if name is not None else None
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.consecutive_nonfinite = 0
        self.skipped_updates = 0
        self._cycle_poisoned = False
        self._cycle_nonfinite: list[torch.Tensor] = []  # per micro-batch of the open cycle, on the device
        self._cycle_losses: list[torch.Tensor] = []

    @staticmethod
    def autocast_dtype_name(dtype: str | None, cuda: bool) -> str | None:
        """The autocast dtype a wrapper built with ``dtype`` uses (``None``: none, e.g. on the CPU).

        Also what the DeepSpeed path autocasts to (``engine/deepspeed_config.py``).
        """
        if dtype is not None and dtype not in ("bfloat16", "float16"):
            raise ValueError(f"dtype must be 'bfloat16', 'float16' or None, got {dtype!r}")
        if dtype == "float16":
            raise ValueError("float16 needs loss scaling: use mmengine's AmpOptimWrapper for it")
        return dtype if cuda else None

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
        The finiteness of each micro-batch's loss stays on the device until the cycle ends; then one
        all-reduce over the ranks (one device-to-host read) decides, per micro-batch in order, as if it had
        been checked at once: no sync between a forward and its backward, no cross-rank barrier inside
        an accumulation cycle (where DDP does not synchronise either). A stop after too many non-finite
        losses in a row is therefore raised at the end of the cycle that reaches the limit.
        """
        self._cycle_nonfinite.append(~torch.isfinite(loss.detach()).all())
        self._cycle_losses.append(loss.detach())
        self.backward(self.scale_loss(loss))
        if not self.should_update():
            return
        flags = any_rank_flags(torch.stack(self._cycle_nonfinite), loss.device)
        losses, self._cycle_nonfinite, self._cycle_losses = self._cycle_losses, [], []
        first = self._inner_count - len(flags)  # 0-based index (runner.iter) of the cycle's first iteration
        logger = MMLogger.get_current_instance()
        stop_at = None
        for k, nonfinite in enumerate(flags):
            iteration = first + k
            if nonfinite:
                self._cycle_poisoned = True
                self.consecutive_nonfinite += 1
                logger.warning(
                    f"non-finite loss at iteration {iteration} (value {float(losses[k].float())} on rank "
                    f"{dist.get_rank() if dist.is_initialized() else 0} or another rank): this accumulation "
                    f"cycle's update is skipped ({self.consecutive_nonfinite} in a row, stop at "
                    f"{self.max_consecutive_nonfinite or 'never'})"
                )
                limit = self.max_consecutive_nonfinite
                if stop_at is None and limit and self.consecutive_nonfinite >= limit:
                    stop_at = (iteration, self.consecutive_nonfinite)
            else:
                self.consecutive_nonfinite = 0
        if self._cycle_poisoned:
            self.skipped_updates += 1
            self.message_hub.update_scalar("train/skipped_updates", float(self.skipped_updates))
        else:
            self.step(**(step_kwargs or {}))
        self.zero_grad(**(zero_kwargs or {}))
        self._cycle_poisoned = False
        if stop_at is not None:
            iteration, count = stop_at
            raise NonFiniteLossError(
                f"{count} non-finite losses in a row (iterations {iteration - count + 1}..{iteration}); "
                f"stopping. Lower the learning rate / check the data of these iterations; "
                f"optim_wrapper.max_consecutive_nonfinite={self.max_consecutive_nonfinite}",
                first_iteration=iteration - count + 1,
                last_iteration=iteration,
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
