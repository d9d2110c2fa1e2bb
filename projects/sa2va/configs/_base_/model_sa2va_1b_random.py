# Sa2VA-1B shapes with random weights (InternViT-300M + Qwen2.5-0.5B + SAM2 Hiera-L), for GPU runs and
# benchmarks where no checkpoint is available. The tokenizer is the tiny offline one; the LM keeps the real
# 151936-row vocabulary (embeddings are only ever grown), so the head costs what it costs in Sa2VA-1B.
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
# 448-px tiles (1..12, thumbnail; 256 tokens each) and the 1024-px SAM2 input, as the released Sa2VA-1B.
processor = dict(
    type=Sa2VAProcessor,
    tokenizer=tokenizer,
    template=template,
    image_processor=dict(type=InternVLImageProcessor),
)
dataset_inputs = dict(processor=processor)
internvit_300m = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=448,
    patch_size=14,
    qkv_bias=True,
    qk_normalization=False,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
)
qwen25_05b = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
model = dict(
    type=Sa2VAModel,
    mllm=dict(
        type=Qwen2InternVL,
        tokenizer=tokenizer,
        vision_config=internvit_300m,
        llm_config=qwen25_05b,
        torch_dtype="bfloat16",
    ),
    grounding_encoder=dict(
        type=SAM2GroundingEncoder, config_name="sam2_hiera_l.yaml", torch_dtype="bfloat16"
    ),
    loss_mask=dict(type=MaskLoss, bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=True),
    # Random init of ~1.5-4.8 B parameters on the host took minutes on the GPU box (4B: 3 min); build on the
    # rank's GPU instead (falls back to the CPU when none is visible).
    init_device="cuda",
    lora=dict(r=128, alpha=256, dropout=0.05, train_embeddings=True),
)
