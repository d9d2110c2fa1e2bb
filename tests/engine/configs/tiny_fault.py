# ruff: noqa: F403, F405
# The CPU demo config without validation, plus test-only fault hooks (tests/engine/fault_hooks.py) that
# are off by default and switched per test with --cfg-options, e.g. custom_hooks.0.at=3 (SIGKILL after
# iteration 3), custom_hooks.1.rank=1 (raise on rank 1), custom_hooks.2.iters=[0,1] (NaN losses),
# custom_hooks.3.all_ranks=True (per-rank loss files with the image ids of each batch).
from mmengine.config import read_base

with read_base():
    from ....projects.sa2va.configs.sa2va_tiny_demo import *

from projects.sa2va.engine.hooks import LossRecorderHook
from tests.engine.fault_hooks import KillAtIterHook, NaNLossAtHook, RaiseOnRankHook

val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks.checkpoint.update(save_best=None, max_keep_ckpts=-1)
default_hooks.logger.update(interval=1)
custom_hooks = [
    dict(type=KillAtIterHook, at=-1),
    dict(type=RaiseOnRankHook, rank=-1),
    dict(type=NaNLossAtHook, iters=[]),
    dict(type=LossRecorderHook, all_ranks=False),
]
