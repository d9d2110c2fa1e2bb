"""InternLM2 tokenizer folders load without remote code and encode as sentencepiece does."""

from __future__ import annotations

import io
import json

import sentencepiece as spm

from projects.sa2va.models.internlm2_tokenizer import load_internlm2_tokenizer

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
