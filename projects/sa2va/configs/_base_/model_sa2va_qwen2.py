# Sa2VA with a Qwen2 LLM (Sa2VA-1B / -4B / InternVL3-2B/8B/14B) loaded from an official Hugging Face folder.
# `path` (the HF folder) is named once: the config loader (engine/config_file.py `apply_model_path`) writes it
# into the tokenizer, the processor, `model.mllm` and `model.load_weights`; a leaf config sets only `path`.
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader
from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.models.internvl import Qwen2InternVL
from projects.sa2va.models.losses import MaskLoss
from projects.sa2va.models.sa2va import Sa2VAModel
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from projects.sa2va.models.tokenizer import load_tokenizer

path = "models/Sa2VA-1B"
template = PROMPT_TEMPLATE.qwen_chat
tokenizer = dict(type=load_tokenizer)  # the folder's tokenizer class, never remote code
# The folder's tokenizer, template, tiling (config.json) and the SAM2 input: the dataset and predictor take it.
processor = dict(type=Sa2VAProcessor.from_pretrained)
# The dataset fields that follow this model: `train_dataloader.dataset.update(dataset_inputs)`.
dataset_inputs = dict(processor=processor)

model = dict(
    type=Sa2VAModel,
    mllm=dict(type=Qwen2InternVL, tokenizer=tokenizer, torch_dtype="bfloat16"),
    grounding_encoder=dict(type=SAM2GroundingEncoder, config_name="sam2_hiera_l.yaml"),
    load_weights=dict(type=HFSa2VALoader),
    loss_mask=dict(type=MaskLoss, bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=True),
    # No `trainable`: every part takes Sa2VAModel's DEFAULT_TRAINABLE, the reference recipe (models/sa2va.py:
    # LLM lora; mlp1, SAM2 mask decoder, text_hidden_fcs full; the rest frozen). A config that changes a part
    # names only that part: `model.trainable = dict(llm="full")`.
    lora=dict(r=128, alpha=256, dropout=0.05, train_embeddings=True),
    lm_loss_weight=1.0,
    seg_hidden_shift=0,
    pretrained_pth=None,
    # Frozen-feature cache (ViT + SAM2 image-encoder outputs reused across epochs): on because the dataset
    # base has augment=None. A leaf config that turns random augmentation on sets mode="off".
    feature_cache=dict(mode="memory", max_bytes=16 * 1024**3),
)
