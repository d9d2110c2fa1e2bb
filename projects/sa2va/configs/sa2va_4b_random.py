# Sa2VA-4B shapes, random weights, the reference recipe (batch 2 x accumulation 16 per GPU), bundled data.
#   bash tools/dist.sh train projects/sa2va/configs/sa2va_4b_random.py 8 --work-dir work_dirs/sa2va_4b_random
# Used by bench/gpu/multi_gpu_run.sh (issue 8). `max_iters` counts micro-batches: 16 per optimiser step.
from mmengine.config import read_base

from projects.sa2va.engine.loops import Sa2VATrainLoop

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_sa2va_4b_random import *
    from ._base_.schedule_reference import *

optimiser_steps = 50
max_iters = optimiser_steps * accumulative_counts
param_scheduler = []  # constant lr: the run measures speed, memory, resume and export, not convergence
train_cfg = dict(type=Sa2VATrainLoop, max_iters=max_iters)
train_dataloader.dataset.update(repeats=100, **dataset_inputs)
default_hooks.logger.interval = accumulative_counts
default_hooks.checkpoint.interval = max_iters
