# ruff: noqa: F403, F405
# Sa2VA-1B shapes, random weights (configs/sa2va_1b_random.py) set up for comparing 1 and 2 GPUs
# at the same global batch: no dropout, no random point sampling, constant lr, per-rank losses recorded per
# iteration in <work_dir>/train_losses.rank<r>.jsonl. Run by bench/gpu/scaling_run.sh.
from mmengine.config import read_base

with read_base():
    from ...projects.sa2va.configs.sa2va_1b_random import *

from projects.sa2va.engine.hooks import LossRecorderHook

model.lora.dropout = 0.0
model.loss_mask.point_sampling = False
train_dataloader.sampler.shuffle = True
train_dataloader.num_workers = 8  # per rank; 4 left the first 2-GPU run data-bound (bench/records)
# One epoch longer than the run (20 records x 500): every epoch boundary stalls the pipeline for one batch's
# latency (a DataLoader batch is built by one worker), which a real dataset pays once per thousands of steps.
train_dataloader.dataset.repeats = 500
default_hooks.checkpoint.update(interval=100000, save_last=False)
default_hooks.logger.interval = 10
# Per-rank loss files, averaged by bench/gpu/scaling_report.py: no cross-rank collective per iteration
# (reduce="mean" would add one, a barrier DDP does not have inside an accumulation cycle).
custom_hooks = [dict(type=LossRecorderHook, all_ranks=True)]
