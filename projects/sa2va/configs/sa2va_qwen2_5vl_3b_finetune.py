# Fine-tune Sa2VA-Qwen2_5-VL-3B (or -7B: change `path`) on your annotations.json data.
#   bash tools/dist.sh train projects/sa2va/configs/sa2va_qwen2_5vl_3b_finetune.py 8
# The official Qwen-VL recipe (see sa2va_qwen3vl_4b_finetune.py).
from mmengine.config import read_base

with read_base():
    from ._base_.dataset_refseg import *
    from ._base_.default_runtime import *
    from ._base_.model_sa2va_qwen2_5vl import *
    from ._base_.schedule_reference import *

path = "models/Sa2VA-Qwen2_5-VL-3B"
data_root = "data/chase_db1"

train_dataloader.dataset.update(
    ann_file=data_root + "/annotations_train.json",
    image_root=data_root + "/images",
    repeats=10,
    **dataset_inputs,  # the model's processor; `path` reaches it when the config is loaded
)
