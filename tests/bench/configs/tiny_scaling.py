# ruff: noqa: F403, F405
# bench/gpu/scaling_run.sh's settings on the tiny CPU model (tests/bench/test_scaling_run.py): iteration-
# based, constant lr, no dropout or random point sampling, per-rank losses recorded per iteration.
from mmengine.config import read_base

with read_base():
    from ....projects.sa2va.configs.sa2va_tiny_demo import *

from mmengine.runner import IterBasedTrainLoop

from projects.sa2va.engine.hooks import LossRecorderHook

model.loss_mask.point_sampling = False
param_scheduler = []
train_cfg = dict(type=IterBasedTrainLoop, max_iters=4)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks.checkpoint.update(interval=100000, save_last=False, save_best=None)
default_hooks.logger.interval = 1
# Per-rank loss files, averaged by bench/gpu/scaling_report.py: no cross-rank collective per iteration
# (reduce="mean" would add one, a barrier DDP does not have inside an accumulation cycle).
custom_hooks = [dict(type=LossRecorderHook, all_ranks=True)]
