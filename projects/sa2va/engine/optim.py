"""An optimiser wrapper that autocasts to bf16 on CUDA and runs plain fp32 on CPU (mmengine 0.10.6).

mmengine's ``AmpOptimWrapper`` asserts a GPU, so one config could not serve both the CPU demo and
GPU training. bf16 needs no loss scaling, so this wrapper is ``OptimWrapper`` + ``torch.autocast``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn


@OPTIM_WRAPPERS.register_module()
class DeviceAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` with ``torch.autocast(dtype)`` in ``optim_context`` when CUDA is available.

    Args:
        dtype: autocast dtype name on CUDA (``'bfloat16'``); ``None`` disables autocast.
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, *, dtype: str | None = "bfloat16", **kwargs) -> None:
        super().__init__(**kwargs)
        if dtype is not None and dtype not in ("bfloat16", "float16"):
            raise ValueError(f"dtype must be 'bfloat16', 'float16' or None, got {dtype!r}")
        if dtype == "float16":
            raise ValueError("float16 needs loss scaling: use mmengine's AmpOptimWrapper for it")
        self.amp_dtype = getattr(torch, dtype) if dtype is not None and torch.cuda.is_available() else None

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model):
            if self.amp_dtype is None:
                yield
            else:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    yield
