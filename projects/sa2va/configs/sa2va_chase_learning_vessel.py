# GPU learning run toward CHASE_DB1 Dice 0.80, the full-resolution recipe plus soft clDice:
#   python tools/train.py projects/sa2va/configs/sa2va_chase_learning_vessel.py --work-dir work_dirs/chase_vessel
#   bash bench/gpu/chase_learning_seeds.sh   (3 seeds side by side on one GPU, FOV scoring, mean and spread)
# The full-resolution recipe
# (sa2va_chase_learning_full.py: random SAM2 Hiera-T trained from scratch, loss at the ground-truth size, learned
# upsampler) plus a soft clDice term, which weighs breaks in thin vessels as much as missing thick ones.
# For images larger than 512 px set the upsampler scale so that 256 * scale reaches the image size, e.g.
#   --cfg-options model.grounding_encoder.upsampler.scale=4     (999x960 CHASE_DB1 originals)
from mmengine.config import read_base

with read_base():
    from .sa2va_chase_learning_full import *

work_dir = "work_dirs/sa2va_chase_learning_vessel"
model.loss_mask.update(cldice_weight=0.5, cldice_iters=10)
# A higher iteration bound than the 230 s runs needed: TimeBudgetHook plans the real count from the measured
# speed (and may lengthen up to this bound when the speed rises).
max_iters = 8000
train_cfg.max_iters = max_iters
param_scheduler[1].end = max_iters
