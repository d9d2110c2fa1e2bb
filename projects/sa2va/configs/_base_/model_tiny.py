# A tiny random-weight Sa2VA (InternViT 2x32 at 224 px, Qwen2 2x64, SAM2 Hiera 4x16 at 256 px) that
# trains on a CPU in seconds. Same code paths as the real model; nothing is downloaded.
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.datasets.image_processing import InternVLImageProcessor
from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.models.internvl import Qwen2InternVL
from projects.sa2va.models.losses import MaskLoss
from projects.sa2va.models.sa2va import Sa2VAModel
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from projects.sa2va.models.tokenizer import build_tiny_tokenizer

template = PROMPT_TEMPLATE.qwen_chat
tokenizer = dict(type=build_tiny_tokenizer)
vit_image_size = 224
sam2_image_size = 256
# Tokenizer, template, image tiling and SAM2 input of this model: the dataset and the predictor take it.
# One tile per image (a 512x512 image gets one tile from the real 448-px ViT too).
processor = dict(
    type=Sa2VAProcessor,
    tokenizer=tokenizer,
    template=template,
    image_processor=dict(type=InternVLImageProcessor, tile_size=vit_image_size, max_tiles=1),
    sam2_size=sam2_image_size,
)
# The dataset fields that follow this model; leaf configs: `train_dataloader.dataset.update(dataset_inputs)`.
dataset_inputs = dict(processor=processor)

tiny_vision_config = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=vit_image_size,
    patch_size=14,
)
tiny_llm_config = dict(
    vocab_size=703,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
tiny_sam2_overrides = dict(
    image_size=sam2_image_size,
    image_encoder=dict(
        trunk=dict(
            embed_dim=16,
            num_heads=1,
            stages=[1, 1, 1, 1],
            global_att_blocks=[],
            window_pos_embed_bkg_spatial_size=[4, 4],
            window_spec=[8, 4, 4, 2],
        ),
        neck=dict(
            d_model=32, backbone_channel_list=[128, 64, 32, 16], position_encoding=dict(num_pos_feats=32)
        ),
    ),
    memory_attention=dict(
        d_model=32,
        num_layers=1,
        layer=dict(
            d_model=32,
            dim_feedforward=64,
            self_attention=dict(embedding_dim=32, feat_sizes=[16, 16]),
            cross_attention=dict(embedding_dim=32, feat_sizes=[16, 16], kv_in_dim=16),
        ),
    ),
    memory_encoder=dict(
        out_dim=16,
        in_dim=32,
        position_encoding=dict(num_pos_feats=16),
        mask_downsampler=dict(embed_dim=32),
        fuser=dict(num_layers=1, layer=dict(dim=32)),
    ),
)

model = dict(
    type=Sa2VAModel,
    mllm=dict(
        type=Qwen2InternVL, tokenizer=tokenizer, vision_config=tiny_vision_config, llm_config=tiny_llm_config
    ),
    grounding_encoder=dict(
        type=SAM2GroundingEncoder, config_name="sam2_hiera_l.yaml", overrides=tiny_sam2_overrides
    ),
    loss_mask=dict(type=MaskLoss, bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=False),
    lora=dict(r=8, alpha=16, dropout=0.0, train_embeddings=True),
)
