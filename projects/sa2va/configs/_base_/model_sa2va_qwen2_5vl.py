# Sa2VA-Qwen2_5-VL (3B / 7B) loaded from an official Hugging Face folder: as model_sa2va_qwen3vl.py with
# transformers' Qwen2.5-VL classes.
from mmengine.config import read_base

from projects.sa2va.models.qwenvl import Qwen2_5_VLSa2VA

with read_base():
    from .model_sa2va_qwen3vl import *

path = "models/Sa2VA-Qwen2_5-VL-3B"
model.mllm.type = Qwen2_5_VLSa2VA
