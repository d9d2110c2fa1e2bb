# Sa2VA-4B shapes, random weights, the reference recipe with less GPU memory (not the official numerics):
#   bash tools/dist.sh train projects/sa2va/configs/sa2va_4b_lowmem.py 8 --work-dir work_dirs/sa2va_4b_lowmem
# One change to sa2va_4b_random.py: LoRA trains only the rows of Sa2VA's added tokens ([SEG] <p> </p> <vp> </vp>)
# of the input embedding and the LM head (PEFT trainable_token_indices) instead of full trainable copies of
# both. Trade-off: the official recipe trains every row of both (2 x 151936 x 2048 parameters, whose fp32
# weights, gradients and AdamW states take 9.3 GiB at these shapes); here every other row stays the frozen base
# weight, so the result differs from an official training run. The export (tools/convert_to_hf.py) is an
# ordinary official folder with the trained rows written into the embedding and the head.
# Memory account: python bench/gpu/llm_saved_activations.py --static.
from mmengine.config import read_base

with read_base():
    from .sa2va_4b_random import *

model.lora.train_embeddings = "new_tokens"
