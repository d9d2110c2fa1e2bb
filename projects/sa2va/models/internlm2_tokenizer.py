"""Load an InternLM2 tokenizer folder (Sa2VA-8B / -26B) without ``trust_remote_code``.

The official ``InternLM2Tokenizer`` (remote code) is a sentencepiece tokenizer: text between added tokens
is encoded with ``SentencePieceProcessor.encode`` (the model's own dummy-prefix normalisation), a bos id is
prepended (``add_bos_token`` true, ``add_eos_token`` false). transformers' ``LlamaTokenizer`` with
``legacy=True`` runs exactly that algorithm over the same ``tokenizer.model``; added tokens
(``<|im_start|>``, InternVL and Sa2VA tokens) come from the folder's ``tokenizer_config.json`` /
``added_tokens.json``. Known difference: ``decode`` spacing around added tokens may differ from the
remote class; encoding (what training uses) is what the tests check.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaTokenizer

__all__ = ["load_internlm2_tokenizer"]


def load_internlm2_tokenizer(path: str | Path, **kwargs) -> LlamaTokenizer:
    """``LlamaTokenizer(legacy=True)`` over ``path/tokenizer.model`` with the folder's added tokens."""
    path = Path(path)
    if not (path / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{path / 'tokenizer.model'} not found: not an InternLM2 tokenizer folder")
    kwargs = {"legacy": True, "add_bos_token": True, "add_eos_token": False, **kwargs}
    return LlamaTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)
