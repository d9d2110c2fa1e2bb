# GPU learning run, REFERENCE mask resolution (loss on 256x256 SAM2 logits vs the nearest-resized 512 px GT).
#   python tools/train.py projects/sa2va/configs/sa2va_chase_learning_low.py --work-dir work_dirs/chase_low
#   bash bench/gpu/chase_learning_run.sh     (this and sa2va_chase_learning_full.py, same budget, evaluation, table)
# A small random Sa2VA: SAM2 Hiera-T at 1024 px trained from scratch (image encoder included: no pretrained
# weights here), tiny InternViT + 2-layer Qwen2 (LoRA) so the language part is cheap; augmentation on.
# The script trains on a patient-grouped split of annotations_train.json (patients 09, 10 held out for
# validation / threshold choice); run alone, this config validates on the test set (a demo default only).
from mmengine.config import read_base
from mmengine.optim import CosineAnnealingLR, LinearLR

from projects.sa2va.datasets.augment import SegAugment
from projects.sa2va.engine.loops import Sa2VATrainLoop
from projects.sa2va.engine.time_budget import TimeBudgetHook
from projects.sa2va.models.losses import MaskLoss
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_tiny import *
    from ._base_.schedule_reference import *
    from ._base_.val_refseg import *

work_dir = "work_dirs/sa2va_chase_learning_low"
sam2_image_size = 1024
model.mllm.llm_config.update(
    hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2
)
model.grounding_encoder = dict(
    type=SAM2GroundingEncoder, config_name="sam2_hiera_t.yaml", overrides=dict(image_size=sam2_image_size)
)
model.trainable = dict(sam2_image_encoder="full", sam2_prompt_encoder="full")
model.lora = dict(r=16, alpha=32, dropout=0.0, train_embeddings=True)
model.loss_mask = dict(type=MaskLoss, bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=False)

augment = dict(
    type=SegAugment,
    hflip=0.5,
    vflip=0.5,
    rot90=0.5,
    scale=(0.85, 1.2),
    rotate_deg=15.0,
    brightness=0.15,
    contrast=0.15,
    gamma=(0.8, 1.25),
)
processor.sam2_size = sam2_image_size  # the base's is 256 px
sizes = dict(processor=processor)
train_dataloader.update(batch_size=8, num_workers=10, persistent_workers=True, pin_memory=True)
# CHASE_DB1 records hold one object: 1 (text, mask) pair per sample instead of 5 identical copies.
train_dataloader.dataset.update(sizes, objects_per_image=1, repeats=25, augment=augment)
val_dataloader.dataset.update(sizes)

# Random init: a larger step than the fine-tuning recipe; warm-up, then cosine to 1 %. The iteration count is
# an upper bound: TimeBudgetHook plans from iteration 40 on, once the per-iteration time has settled, re-plans
# every 50 iterations, and shortens or lengthens the run (and the cosine) within `seconds` and `max_iters`.
lr = 4e-4
max_iters = 3000
warmup_iters = 60
optim_wrapper.optimizer.lr = lr
optim_wrapper.accumulative_counts = 1
param_scheduler = [
    dict(type=LinearLR, start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=lr * 0.01, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=Sa2VATrainLoop, max_iters=max_iters, val_interval=250)
custom_hooks = [dict(type=TimeBudgetHook, seconds=200, calibrate_at=40, skip=10, reserve=0.1)]
default_hooks.logger.interval = 20
default_hooks.checkpoint.update(interval=100000, max_keep_ckpts=1, save_best=save_best, rule="greater")
