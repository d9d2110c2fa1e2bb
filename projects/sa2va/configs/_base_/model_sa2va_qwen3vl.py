# Sa2VA-Qwen3-VL (2B / 4B) loaded from an official Hugging Face folder: transformers' Qwen3-VL vision tower and
# text decoder, the Qwen2-family parts and recipe otherwise. The whole vision tower (merger included) is frozen
# and LoRA goes on the text decoder, as in the official Qwen-VL recipe. Images go through the folder's
# Qwen-VL image processor (preprocessor_config.json) at Sa2VA's pixel budget. Leaf configs set only
# `path` (the loader writes it into the places that read the folder: see model_sa2va_qwen2.py).
from mmengine.config import read_base

from projects.sa2va.models.qwenvl import Qwen3VLSa2VA

with read_base():
    from .model_sa2va_qwen2 import *

path = "models/Sa2VA-Qwen3-VL-4B"
model.mllm = dict(type=Qwen3VLSa2VA, tokenizer=tokenizer, torch_dtype="bfloat16")
model.trainable = dict(mlp1="frozen")  # no separate projector: the merger belongs to the frozen vision tower
