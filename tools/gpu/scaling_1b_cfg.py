# ruff: noqa: F403, F405
# Sa2VA-1B shapes, random weights (configs/sa2va_1b_random.py) set up for comparing 1 and 2 GPUs
# at the same global batch: no dropout, no random point sampling, constant lr, global-mean loss recorded per
# iteration in <work_dir>/train_losses.jsonl. Run by tools/gpu/scaling_run.sh.
from mmengine.config import read_base

with read_base():
    from ...projects.sa2va.configs.sa2va_1b_random import *

from projects.sa2va.engine.hooks import LossRecorderHook

model.lora.dropout = 0.0
model.loss_mask.point_sampling = False
train_dataloader.sampler.shuffle = True
train_dataloader.num_workers = 8  # 4 per rank left the 2-GPU run data-bound at batch 16 (docs/gpu_runs)
default_hooks.checkpoint.update(interval=100000, save_last=False)
default_hooks.logger.interval = 10
custom_hooks = [dict(type=LossRecorderHook, reduce="mean")]
