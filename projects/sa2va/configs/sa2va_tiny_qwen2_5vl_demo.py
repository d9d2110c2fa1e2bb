# CPU demo of the Qwen2.5-VL family: a tiny random-weight Sa2VA-Qwen2_5-VL fine-tuned on the bundled sample.
#   python tools/train.py projects/sa2va/configs/sa2va_tiny_qwen2_5vl_demo.py
from mmengine.config import read_base

with read_base():
    from .sa2va_tiny_demo import *
    from ._base_.model_tiny_qwen2_5vl import *

work_dir = "work_dirs/sa2va_tiny_qwen2_5vl_demo"
# Replaced, not merged: the tiny demo's processor has InternVL tiling.
train_dataloader.dataset.processor = processor
val_dataloader.dataset.processor = processor
