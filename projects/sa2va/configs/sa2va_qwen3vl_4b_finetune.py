# Fine-tune Sa2VA-Qwen3-VL-4B (or -2B: change `path`) on your annotations.json data.
#   bash tools/dist.sh train projects/sa2va/configs/sa2va_qwen3vl_4b_finetune.py 8
# The official Qwen-VL recipe: LoRA r=128 on the text decoder with embed_tokens / lm_head copies, frozen
# vision tower and SAM2 encoder, trained SAM2 mask decoder + text_hidden_fcs, AdamW 4e-5, bf16.
# Edit: `path` (the downloaded HF folder), `data_root`, `train_ann_file`, `val_ann_file` (None: no validation),
# and with `--cfg-options` or lines at the end: `train_cfg.max_epochs` (the warm-up and cosine follow it),
# `train_dataloader.batch_size`, `optim_wrapper.accumulative_counts`, `optim_wrapper.optimizer.lr`.
from mmengine.config import read_base

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_sa2va_qwen3vl import *
    from ._base_.schedule_reference import *
    from ._base_.val_refseg import *

path = "models/Sa2VA-Qwen3-VL-4B"
data_root = "data/chase_db1"
train_ann_file = data_root + "/annotations_train.json"
val_ann_file = data_root + "/annotations_test.json"  # None: train without validation

train_dataloader.dataset.update(
    ann_file=train_ann_file,
    image_root=data_root + "/images",
    repeats=10,
    **dataset_inputs,  # the model's processor; `path` reaches it when the config is loaded
)
# Validation every `val_interval` iterations, the best checkpoint kept as best_val_dice_best_iter_N.pth
# (val_ann_file None: the config loader switches validation off).
val_dataloader.dataset.update(ann_file=val_ann_file, image_root=data_root + "/images", **dataset_inputs)
train_cfg.update(val_interval=val_interval)
default_hooks.checkpoint.update(save_best=save_best, rule="greater")
