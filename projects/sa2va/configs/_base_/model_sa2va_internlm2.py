# Sa2VA with an InternLM2 LLM (Sa2VA-8B / -26B) loaded from an official Hugging Face folder: the Qwen2 base's
# parts, recipe and feature cache with the InternLM2 adapter and the internlm2_chat template. `load_tokenizer`
# opens the folder's InternLM2 (sentencepiece) tokenizer without remote code. Leaf configs set only
# `path` (the loader writes it into the places that read the folder: see model_sa2va_qwen2.py).
from mmengine.config import read_base
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.models.internvl import InternLM2InternVL

with read_base():
    from .model_sa2va_qwen2 import *

path = "models/Sa2VA-8B"
template = PROMPT_TEMPLATE.internlm2_chat
model.mllm.type = InternLM2InternVL
