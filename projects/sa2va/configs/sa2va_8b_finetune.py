# Fine-tune an official Sa2VA checkpoint with an InternLM2 LLM (Hugging Face folder: Sa2VA-8B, Sa2VA-26B)
# on your annotations.json data (Qwen2-LLM releases: sa2va_finetune.py).
#   bash tools/dist.sh train projects/sa2va/configs/sa2va_8b_finetune.py 8
# Edit: `path` (the downloaded HF folder), `data_root`, epochs/batch/lr below. The recipe: LoRA r=128 on the
# LLM, frozen ViT and SAM2 encoder, trained mlp1 + SAM2 mask decoder + text_hidden_fcs, AdamW 4e-5, bf16.
from mmengine.config import read_base

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_sa2va_internlm2 import *
    from ._base_.schedule_reference import *

path = "models/Sa2VA-8B"
data_root = "data/chase_db1"
pretrained_pth = None  # optional: a trainable-weights .pth to start from

model.pretrained_pth = pretrained_pth
train_dataloader.dataset.update(
    ann_file=data_root + "/annotations_train.json",
    image_root=data_root + "/images",
    repeats=10,
    **dataset_inputs,  # the model's processor; `path` reaches it when the config is loaded
)
