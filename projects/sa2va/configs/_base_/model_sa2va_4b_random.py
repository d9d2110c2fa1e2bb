# Sa2VA-4B shapes with random weights: InternViT-300M + Qwen2.5-3B + SAM2 Hiera-L (see model_sa2va_1b_random.py).
from mmengine.config import read_base

with read_base():
    from .model_sa2va_1b_random import *

qwen25_3b = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
model.mllm.llm_config = qwen25_3b
