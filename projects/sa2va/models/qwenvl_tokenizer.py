"""A tiny offline tokenizer in the layout of the Qwen2.5-VL / Qwen3-VL tokenizers, for tests and demos.

Same byte-level BPE as :func:`~.tokenizer.build_tiny_tokenizer` (``Qwen2TokenizerFast``), with the Qwen-VL
special tokens in their official order after the BPE vocabulary (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, the object/box/quad markers, ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``,
``<|image_pad|>``, ``<|video_pad|>``), then Sa2VA's ``[SEG] <p> </p> <vp> </vp>`` (no InternVL tokens: a
Sa2VA Qwen-VL folder has none). No bos; eos ``<|im_end|>`` and pad ``<|endoftext|>`` as the Qwen-VL
instruct tokenizers.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2TokenizerFast

from .tokenizer import TINY_VOCAB_SIZE, _special, _train_backend, add_sa2va_tokens

__all__ = ["QWEN_VL_TOKENS", "build_tiny_qwenvl_tokenizer"]

#: The Qwen-VL special tokens after ``<|im_end|>``, in the official id order.
QWEN_VL_TOKENS: list[str] = [
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_tiny_qwenvl_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The tiny Qwen-VL-layout tokenizer (~820 ids); saved to and reloaded from ``save_dir`` if given."""
    backend = _train_backend(TINY_VOCAB_SIZE)
    backend.add_special_tokens([_special(t) for t in QWEN_VL_TOKENS])
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[_special(t) for t in ["<|im_start|>", "<|im_end|>", *QWEN_VL_TOKENS]],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    add_sa2va_tokens(tokenizer, internvl_tokens=False)
    if save_dir is None:
        return tokenizer
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(save_dir))
    return AutoTokenizer.from_pretrained(str(save_dir))
