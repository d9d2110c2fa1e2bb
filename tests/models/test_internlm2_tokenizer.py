"""InternLM2 tokenizer folders: loaded without remote code, encoded as sentencepiece, saved as official."""

from __future__ import annotations

import io
import json

import pytest
import sentencepiece as spm

from projects.sa2va.models.internlm2_tokenizer import (
    INTERNLM2_AUTO_MAP,
    INTERNLM2_CHAT_TOKENS,
    InternLM2Tokenizer,
    build_tiny_internlm2_tokenizer,
    load_internlm2_tokenizer,
)
from projects.sa2va.models.tokenizer import (
    INTERNVL_TOKENS,
    SPECIAL_TOKENS,
    add_sa2va_tokens,
    build_tiny_tokenizer,
    load_tokenizer,
)

TEXTS = ["Please segment the blood vessel.", "  two  spaces\nand a newline", "Sure, it is the artery."]


def test_encoding_equals_sentencepiece_plus_bos(tmp_path):
    corpus = [t for _ in range(20) for t in [*TEXTS, "the quick brown fox jumps over the lazy dog"]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=80,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
    )
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    special = ["<|im_start|>", "<|im_end|>", "[SEG]"]
    added = {
        str(80 + i): {
            "content": t,
            "special": True,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for i, t in enumerate(special)
    }
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "InternLM2Tokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "</s>",
                "add_bos_token": True,
                "add_eos_token": False,
                "added_tokens_decoder": added,
                "additional_special_tokens": special,
            }
        )
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tok = load_internlm2_tokenizer(tmp_path)
    for text in TEXTS:
        assert tok(text)["input_ids"] == [1, *sp.encode(text)]
    ids = tok("<|im_start|>user\nPlease segment the blood vessel.[SEG]<|im_end|>")["input_ids"]
    assert ids == [1, 80, *sp.encode("user\nPlease segment the blood vessel."), 82, 81]
    assert len(tok) == 83


def test_tiny_internlm2_folder_is_deterministic_and_in_the_official_layout(tmp_path):
    a = build_tiny_internlm2_tokenizer(tmp_path / "a")
    build_tiny_internlm2_tokenizer(tmp_path / "b")
    assert (tmp_path / "a/tokenizer.model").read_bytes() == (tmp_path / "b/tokenizer.model").read_bytes()
    cfg = json.loads((tmp_path / "a/tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "InternLM2Tokenizer" and cfg["auto_map"] == INTERNLM2_AUTO_MAP
    assert (a.unk_token_id, a.bos_token_id, a.eos_token_id, a.pad_token_id) == (0, 1, 2, 2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "a/tokenizer.model"))
    for t in INTERNLM2_CHAT_TOKENS:  # sentencepiece pieces and special added tokens
        assert a.convert_tokens_to_ids(t) == sp.piece_to_id(t) and t in a.all_special_tokens
    extra = INTERNVL_TOKENS + SPECIAL_TOKENS
    assert [a.convert_tokens_to_ids(t) for t in extra] == list(range(sp.get_piece_size(), len(a)))
    assert add_sa2va_tokens(a) == 0
    text = "Sure, it is the blood vessel."
    assert a(text)["input_ids"] == [1, *sp.encode(text)]


def test_load_tokenizer_picks_the_family_without_remote_code(tmp_path):
    build_tiny_internlm2_tokenizer(tmp_path / "internlm2")
    build_tiny_tokenizer(tmp_path / "qwen2")
    assert isinstance(load_tokenizer(tmp_path / "internlm2"), InternLM2Tokenizer)
    assert type(load_tokenizer(tmp_path / "qwen2")).__name__ == "Qwen2TokenizerFast"
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json"):
        load_tokenizer(tmp_path / "nowhere")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ChatGLMTokenizer"}))
    with pytest.raises(ValueError, match=r"ChatGLMTokenizer.*remote code"):
        load_tokenizer(remote)


def test_save_pretrained_keeps_the_official_class_and_auto_map(tmp_path):
    tok = build_tiny_internlm2_tokenizer(tmp_path / "src")
    tok.save_pretrained(str(tmp_path / "out"))
    cfg = json.loads((tmp_path / "out/tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "InternLM2Tokenizer" and cfg["auto_map"] == INTERNLM2_AUTO_MAP
    again = load_tokenizer(tmp_path / "out")
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nPlease segment the vein.<|im_end|>\nSure, [SEG]."
    assert again(text)["input_ids"] == tok(text)["input_ids"] and len(again) == len(tok)
