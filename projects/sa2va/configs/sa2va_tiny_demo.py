# CPU demo: a tiny random-weight Sa2VA fine-tuned on the bundled CHASE_DB1 sample (20 train images).
#   python tools/train.py projects/sa2va/configs/sa2va_tiny_demo.py      (or: make demo)
from mmengine.config import read_base
from mmengine.optim import CosineAnnealingLR, LinearLR

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_tiny import *
    from ._base_.schedule_reference import *
    from ._base_.val_refseg import *

work_dir = "work_dirs/sa2va_tiny_demo"
max_epochs = 10
lr = 1e-3  # random weights: a larger step than the fine-tuning recipe's 4e-5
optim_wrapper.optimizer.lr = lr
optim_wrapper.accumulative_counts = 1
param_scheduler = [
    dict(type=LinearLR, start_factor=0.1, by_epoch=True, begin=0, end=0.5, convert_to_iter_based=True),
    dict(
        type=CosineAnnealingLR,
        eta_min=lr * 0.1,
        by_epoch=True,
        begin=0.5,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg.max_epochs = max_epochs

train_dataloader.num_workers = 0
train_dataloader.persistent_workers = False
train_dataloader.pin_memory = False
train_dataloader.dataset.update(dataset_inputs)
default_hooks.logger.interval = 5
default_hooks.checkpoint.interval = 20
# Validation on the 8 test images (data/chase_db1/annotations_test.json) twice; keep the best checkpoint.
val_dataloader.dataset.update(dataset_inputs)
train_cfg.update(val_interval=50)
default_hooks.checkpoint.update(save_best=save_best, rule="greater")
