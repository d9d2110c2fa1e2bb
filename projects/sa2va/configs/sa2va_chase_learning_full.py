# GPU learning run, FULL-RESOLUTION masks: the reference run of sa2va_chase_learning_low.py with the mask loss on
# logits at the ground-truth size (512 px) and the learned upsampler (SAM2 stride-4 features + the image,
# 2x the 256 logits = 512 px). Same data, schedule and time budget.
#   bash tools/gpu/chase_learning_run.sh
#   python tools/train.py projects/sa2va/configs/sa2va_chase_learning_full.py --work-dir work_dirs/chase_full
from mmengine.config import read_base

with read_base():
    from .sa2va_chase_learning_low import *

work_dir = "work_dirs/sa2va_chase_learning_full"
model.loss_mask.resolution = "full"
model.grounding_encoder.upsampler = dict(hidden=32, scale=2, num_layers=2, use_image=True)
