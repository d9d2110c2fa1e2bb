# The reference optimisation recipe: AdamW 4e-5, wd 0.05, clip 1.0, 5 % linear warm-up then cosine, bf16,
# batch 2 per GPU x accumulation 16. bf16 autocast on CUDA, fp32 on CPU (DeviceAmpOptimWrapper).
from mmengine.optim import CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from projects.sa2va.engine.loops import Sa2VATrainLoop
from projects.sa2va.engine.optim import DeviceAmpOptimWrapper

lr = 4e-5
weight_decay = 0.05
max_norm = 1.0
accumulative_counts = 16
max_epochs = 1
warmup_ratio = 0.05

optim_wrapper = dict(
    type=DeviceAmpOptimWrapper,
    dtype="bfloat16",
    optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    max_consecutive_nonfinite=5,  # stop (after saving a checkpoint) on 5 NaN/inf losses in a row
)
# `of_run=True`: begin/end are fractions of the run (engine/schedule.py), resolved to iterations when the
# training loop is built, so the warm-up and the cosine follow `train_cfg.max_epochs` wherever it is set.
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, of_run=True, begin=0.0, end=warmup_ratio),
    dict(type=CosineAnnealingLR, eta_min=0.0, of_run=True, begin=warmup_ratio, end=1.0),
]
# Iteration-based with max_epochs as the knob: resumes mid-epoch exactly (see engine/loops.py).
train_cfg = dict(type=Sa2VATrainLoop, max_epochs=max_epochs)
