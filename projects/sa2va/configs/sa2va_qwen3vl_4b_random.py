# Sa2VA-Qwen3-VL-4B shapes, random weights, bf16, the bundled CHASE_DB1 sample: the GPU speed/memory run.
#   python tools/train.py projects/sa2va/configs/sa2va_qwen3vl_4b_random.py --work-dir work_dirs/sa2va_qwen3vl_4b_random
from mmengine.config import read_base

from projects.sa2va.engine.loops import Sa2VATrainLoop

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_sa2va_qwen3vl_4b_random import *
    from ._base_.schedule_reference import *

max_iters = 20
optim_wrapper.accumulative_counts = 1
param_scheduler = []  # constant lr: 20 iterations measure speed, not convergence
train_cfg = dict(type=Sa2VATrainLoop, max_iters=max_iters)  # the project's loop, counted in iterations
train_dataloader.dataset.update(repeats=10, **dataset_inputs)
default_hooks.logger.interval = 5
default_hooks.checkpoint.interval = max_iters
