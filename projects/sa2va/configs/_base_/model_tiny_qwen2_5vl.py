# A tiny random-weight Sa2VA-Qwen2_5-VL (vision 2x32 with window attention at 14 px patches, text 2x64 with
# M-RoPE, SAM2 Hiera 4x16 at 256 px): transformers' Qwen2.5-VL classes at tiny sizes.
from mmengine.config import read_base

from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.models.qwenvl import Qwen2_5_VLSa2VA

with read_base():
    from .model_tiny_qwen3vl import *

# 512x512 images -> 8x8 merged tokens (14 px patches, 2x2 merge).
image_processor.update(
    patch_size=14,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    min_pixels=28 * 28 * 16,
    max_pixels=28 * 28 * 64,
)
processor = dict(
    type=Sa2VAProcessor,
    tokenizer=tokenizer,
    template=template,
    image_processor=image_processor,
    sam2_size=sam2_image_size,
)
dataset_inputs = dict(processor=processor)
tiny_qwen2_5vl_config = dict(
    text_config=dict(
        vocab_size=720,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]),
    ),
    vision_config=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        out_hidden_size=64,
        tokens_per_second=2,
    ),
)
model.mllm = dict(type=Qwen2_5_VLSa2VA, tokenizer=tokenizer, config=tiny_qwen2_5vl_config)
