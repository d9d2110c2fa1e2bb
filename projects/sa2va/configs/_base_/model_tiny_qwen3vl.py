# A tiny random-weight Sa2VA-Qwen3-VL (vision 2x32 with DeepStack at 16 px patches, text 3x64 with M-RoPE,
# SAM2 Hiera 4x16 at 256 px) that trains on a CPU in seconds: transformers' Qwen3-VL classes at tiny sizes.
from mmengine.config import read_base

from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.datasets.qwenvl_processing import QwenVLImageProcessor
from projects.sa2va.models.qwenvl import Qwen3VLSa2VA
from projects.sa2va.models.qwenvl_tokenizer import build_tiny_qwenvl_tokenizer

with read_base():
    from .model_tiny import *

tokenizer = dict(type=build_tiny_qwenvl_tokenizer)
# 512x512 images -> 8x8 merged tokens (16 px patches, 2x2 merge).
image_processor = dict(
    type=QwenVLImageProcessor,
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    min_pixels=32 * 32 * 16,
    max_pixels=32 * 32 * 64,
)
processor = dict(
    type=Sa2VAProcessor,
    tokenizer=tokenizer,
    template=template,
    image_processor=image_processor,
    sam2_size=sam2_image_size,
)
dataset_inputs = dict(processor=processor)
tiny_qwen3vl_config = dict(
    text_config=dict(
        vocab_size=720,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=5000000.0,
        rope_scaling=dict(rope_type="default", mrope_section=[4, 2, 2], mrope_interleaved=True),
    ),
    vision_config=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    ),
)
model.mllm = dict(type=Qwen3VLSa2VA, tokenizer=tokenizer, config=tiny_qwen3vl_config)
