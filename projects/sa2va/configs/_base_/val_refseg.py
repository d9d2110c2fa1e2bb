# Validation during training: teacher-forced Dice / IoU / clDice on an annotations set, at 0.5 and at the
# best threshold of that set (projects/sa2va/evaluation/seg_metric.py), every `val_interval` iterations.
# The leaf config gives the dataset the model's processor like the training set's and sets
#   train_cfg.update(val_interval=val_interval)
#   default_hooks.checkpoint.update(save_best=save_best, rule="greater")   # best_val_dice_best_iter_N.pth
# Logged keys: val/dice, val/iou, val/cl_dice, val/precision, val/recall, val/cIoU (at 0.5),
# val/dice_best, val/iou_best, val/cl_dice_best, val/best_threshold.
from mmengine.dataset import DefaultSampler
from mmengine.runner import ValLoop

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.refseg import RefSegDataset
from projects.sa2va.evaluation.seg_metric import SegMetric

val_interval = 500
save_best = "val/dice_best"  # Dice at the threshold tuned on the validation set (what prediction uses)

val_dataset = dict(
    type=RefSegDataset,
    ann_file="data/chase_db1/annotations_test.json",
    image_root="data/chase_db1/images",
    processor=None,  # set in the leaf config, as for train_dataset
    objects_per_image=None,  # every object, in order
    random_templates=False,
    augment=None,
    repeats=1,
    seed=0,
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    pin_memory=False,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=sa2va_collate),
    dataset=val_dataset,
)
val_evaluator = dict(type=SegMetric, cl_dice=True)
val_cfg = dict(type=ValLoop)
