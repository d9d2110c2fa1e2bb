# Sa2VA-Qwen3-VL-4B shapes with random weights (Qwen3-VL-4B vision tower and text decoder, SAM2 Hiera-L), for
# GPU runs where no checkpoint is available. Tokenizer: the tiny offline Qwen-VL one; the text decoder keeps
# the 151936-row vocabulary, so the embedding and head cost what they cost in the real model.
from mmengine.config import read_base

from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.datasets.qwenvl_processing import QwenVLImageProcessor
from projects.sa2va.models.qwenvl import Qwen3VLSa2VA
from projects.sa2va.models.qwenvl_tokenizer import build_tiny_qwenvl_tokenizer

with read_base():
    from .model_sa2va_1b_random import *

tokenizer = dict(type=build_tiny_qwenvl_tokenizer)
image_processor = dict(
    type=QwenVLImageProcessor, patch_size=16, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)
)
qwen3vl_4b = dict(
    text_config=dict(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        rope_theta=5000000.0,
        rms_norm_eps=1e-6,
        rope_scaling=dict(rope_type="default", mrope_section=[24, 20, 20], mrope_interleaved=True),
    ),
    vision_config=dict(
        depth=24,
        hidden_size=1024,
        intermediate_size=4096,
        num_heads=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=2560,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    ),
)
model.mllm = dict(type=Qwen3VLSa2VA, tokenizer=tokenizer, config=qwen3vl_4b, torch_dtype="bfloat16")
model.trainable = dict(mlp1="frozen")  # no separate projector: the merger is part of the frozen vision tower
processor = dict(type=Sa2VAProcessor, tokenizer=tokenizer, template=template, image_processor=image_processor)
dataset_inputs = dict(processor=processor)
