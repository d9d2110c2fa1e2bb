"""InternLM2 tokenizer folders (Sa2VA-8B / -26B) without ``trust_remote_code``, and a tiny offline one.

The official ``InternLM2Tokenizer`` (remote code ``tokenization_internlm2.py``) is a sentencepiece
tokenizer: text between added tokens is encoded with ``SentencePieceProcessor.encode`` (the model's own
dummy-prefix normalisation), a bos id is prepended (``add_bos_token`` true, ``add_eos_token`` false).
transformers' ``LlamaTokenizer`` with ``legacy=True`` runs exactly that algorithm over the same
``tokenizer.model``; added tokens (``<|im_start|>``, InternVL and Sa2VA tokens) come from the folder's
``tokenizer_config.json`` / ``added_tokens.json``. :class:`InternLM2Tokenizer` is that ``LlamaTokenizer``
under the official class name, so that ``save_pretrained`` writes ``tokenizer_class``
``InternLM2Tokenizer`` and keeps the folder's ``auto_map`` (an exported folder stays loadable by the
official remote code). Known difference: ``decode`` spacing around added tokens may differ from the remote
class; encoding (what training and prompts use) is what the tests check.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from transformers import LlamaTokenizer

__all__ = [
    "INTERNLM2_AUTO_MAP",
    "INTERNLM2_CHAT_TOKENS",
    "INTERNLM2_TOKENIZER_CLASSES",
    "InternLM2Tokenizer",
    "build_tiny_internlm2_tokenizer",
    "load_internlm2_tokenizer",
]

#: ``tokenizer_class`` values of an InternLM2 tokenizer folder (official remote code).
INTERNLM2_TOKENIZER_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")
#: ``auto_map`` of InternLM2's official ``tokenizer_config.json`` (remote code, slow and fast class).
INTERNLM2_AUTO_MAP = {
    "AutoTokenizer": [
        "tokenization_internlm2.InternLM2Tokenizer",
        "tokenization_internlm2_fast.InternLM2TokenizerFast",
    ]
}
#: The chat tokens InternLM2.5-chat holds as sentencepiece pieces (ids 92538..92543 in the real model,
#: in this order) and registers as special added tokens.
INTERNLM2_CHAT_TOKENS = [
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
]


class InternLM2Tokenizer(LlamaTokenizer):
    """``LlamaTokenizer(legacy=True)``: the official ``InternLM2Tokenizer``'s encoding, without remote code.

    Only the class name differs from ``LlamaTokenizer`` (transformers 4.57.1): ``save_pretrained`` records it
    as ``tokenizer_class``.
    """


def load_internlm2_tokenizer(path: str | Path, **kwargs) -> InternLM2Tokenizer:
    """:class:`InternLM2Tokenizer` over ``path/tokenizer.model`` with the folder's added tokens."""
    path = Path(path)
    if not (path / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{path / 'tokenizer.model'} not found: not an InternLM2 tokenizer folder")
    kwargs = {"legacy": True, "add_bos_token": True, "add_eos_token": False, **kwargs}
    return InternLM2Tokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def build_tiny_internlm2_tokenizer(save_dir: str | Path, vocab_size: int = 800) -> InternLM2Tokenizer:
    """Train a tiny sentencepiece BPE model offline and write an InternLM2 tokenizer folder.

    The layout of the official Sa2VA-8B folder at a tiny size: ``tokenizer.model`` (ids ``<unk>`` 0,
    ``<s>`` 1, ``</s>`` 2, then :data:`INTERNLM2_CHAT_TOKENS` as user-defined pieces, then the 256 byte
    pieces and the BPE pieces; ``vocab_size`` in all; identity normalisation, byte fallback) and
    ``tokenizer_config.json`` with ``tokenizer_class`` ``InternLM2Tokenizer``,
    :data:`INTERNLM2_AUTO_MAP`, bos ``<s>``, eos / pad ``</s>``, unk ``<unk>``, the chat tokens as special
    added tokens, and the InternVL + Sa2VA tokens as added tokens after the sentencepiece vocabulary
    (``added_tokens.json`` too). Deterministic: the corpus is fixed and training runs on one thread.

    Returns:
        the folder reloaded with :func:`load_internlm2_tokenizer`.
    """
    import sentencepiece as spm

    from .tokenizer import INTERNVL_TOKENS, SPECIAL_TOKENS, tiny_corpus

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(tiny_corpus())),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=INTERNLM2_CHAT_TOKENS,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    (save_dir / "tokenizer.model").write_bytes(buf.getvalue())

    def entry(token: str) -> dict:
        return {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    decoder = {"0": entry("<unk>"), "1": entry("<s>"), "2": entry("</s>")}
    decoder.update({str(3 + i): entry(t) for i, t in enumerate(INTERNLM2_CHAT_TOKENS)})
    extra = INTERNVL_TOKENS + SPECIAL_TOKENS
    decoder.update({str(vocab_size + i): entry(t) for i, t in enumerate(extra)})
    config = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": INTERNLM2_CHAT_TOKENS[::-1] + extra,
        "auto_map": INTERNLM2_AUTO_MAP,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "</s>",
        "sp_model_kwargs": None,
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (save_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    added = {t: vocab_size + i for i, t in enumerate(extra)}
    (save_dir / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    (save_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return load_internlm2_tokenizer(save_dir)
