# GPU learning run, FULL-RESOLUTION masks: sa2va_chase_learning_low.py with the mask loss at the GT size (512 px)
#   python tools/train.py projects/sa2va/configs/sa2va_chase_learning_full.py --work-dir work_dirs/chase_full
#   bash bench/gpu/chase_learning_run.sh
# and the learned upsampler (SAM2 stride-4 features + the image; 2x the 256 logits = 512 px). Same data,
# schedule and time budget as the reference run.
from mmengine.config import read_base

with read_base():
    from .sa2va_chase_learning_low import *

work_dir = "work_dirs/sa2va_chase_learning_full"
model.loss_mask.resolution = "full"
model.grounding_encoder.upsampler = dict(hidden=32, scale=2, num_layers=2, use_image=True)
