"""``ProfileItersHook``: ``torch.profiler`` traces and operator tables of chosen training iterations.

An mmengine 0.10.6 ``Hook`` for short diagnostic runs; training configs of the product do not use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@HOOKS.register_module()
class ProfileItersHook(Hook):
    """Profile training iterations ``[start, start + iters)`` (1-based) with ``torch.profiler`` on every rank.

    Writes, per rank ``r``, ``<work_dir>/profile.rank<r>.json`` (a Chrome / Perfetto trace) and
    ``profile.rank<r>.txt`` (the operators sorted by device time, then by host time). CUDA activity is
    recorded when CUDA is in use. Meant for short diagnostic runs (e.g. where a gradient-sync step spends
    its time, ``bench/gpu/scaling_1b_profile_cfg.py``), not for training runs.

    Args:
        start: first profiled iteration (after warm-up).
        iters: number of profiled iterations.
        row_limit: operators per table.
    """

    priority = "VERY_LOW"

    def __init__(self, start: int = 21, iters: int = 4, row_limit: int = 40) -> None:
        if start < 1 or iters < 1:
            raise ValueError(
                f"ProfileItersHook needs start >= 1 and iters >= 1, got start={start}, iters={iters}"
            )
        self.start, self.iters, self.row_limit = int(start), int(iters), int(row_limit)
        self._prof: Any = None

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if runner.iter + 1 == self.start:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU]
            if _cuda_in_use():
                acts.append(ProfilerActivity.CUDA)
            self._prof = profile(activities=acts)
            self._prof.__enter__()

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if self._prof is None or runner.iter + 1 < self.start + self.iters - 1:
            return
        cuda = _cuda_in_use()
        if cuda:
            torch.cuda.synchronize()
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        work_dir = Path(runner.work_dir)
        prof.export_chrome_trace(str(work_dir / f"profile.rank{runner.rank}.json"))
        table = prof.key_averages()
        parts = [f"iterations {self.start}..{self.start + self.iters - 1}, rank {runner.rank}"]
        if cuda:
            parts.append(table.table(sort_by="cuda_time_total", row_limit=self.row_limit))
        parts.append(table.table(sort_by="cpu_time_total", row_limit=self.row_limit))
        (work_dir / f"profile.rank{runner.rank}.txt").write_text("\n\n".join(parts) + "\n")
        runner.logger.info(f"profile of iterations {self.start}..{self.start + self.iters - 1} in {work_dir}")

    def after_train(self, runner: Any) -> None:
        if self._prof is not None:  # training ended inside the window
            self._prof.__exit__(None, None, None)
            self._prof = None
