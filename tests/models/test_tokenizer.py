"""Tiny Qwen2-style tokenizer and Sa2VA special tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen2Tokenizer, Qwen2TokenizerFast

from projects.sa2va.models.tokenizer import (
    INTERNVL_TOKENS,
    QWEN_CHAT_TOKENS,
    SPECIAL_TOKENS,
    add_sa2va_tokens,
    build_tiny_tokenizer,
)

ALL_SPECIAL = QWEN_CHAT_TOKENS + INTERNVL_TOKENS + SPECIAL_TOKENS
CHAT = "<|im_start|>user\nPlease segment the blood vessel.<|im_end|>\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Qwen2TokenizerFast]:
    path = tmp_path_factory.mktemp("tok")
    return path, build_tiny_tokenizer(path)


def test_token_lists() -> None:
    assert SPECIAL_TOKENS == ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]
    assert INTERNVL_TOKENS[:3] == ["<img>", "</img>", "<IMG_CONTEXT>"]


def test_reload_class_and_files(saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    path, tok = saved
    assert type(tok) is Qwen2TokenizerFast
    assert type(AutoTokenizer.from_pretrained(path)) is Qwen2TokenizerFast
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {
        p.name for p in path.iterdir()
    }
    assert 500 <= len(tok) <= 1000
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None


def test_special_token_ids_are_single_and_ordered(saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    _, tok = saved
    ids = tok.convert_tokens_to_ids(ALL_SPECIAL)
    n = len(tok)
    assert ids == list(range(n - len(ALL_SPECIAL), n))  # appended after the BPE vocab, in order
    for token, token_id in zip(ALL_SPECIAL, ids):
        assert tok.encode(token) == [token_id]
        ids_in_text = tok.encode(f"a {token} b")
        assert ids_in_text.count(token_id) == 1 and tok.decode(ids_in_text) == f"a {token} b"
        assert token in tok.all_special_tokens


def test_chat_encoding_no_injected_spaces(saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    _, tok = saved
    ids = tok.encode(CHAT)
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == start and ids.count(start) == 1 and ids.count(end) == 1
    assert ids[1:3] == tok.encode("user\n")
    assert tok.encode("user\nPlease segment the blood vessel.") == ids[1 : ids.index(end)]
    assert tok.decode(ids) == CHAT
    seg = tok.convert_tokens_to_ids("[SEG]")
    answer = tok.encode("Sure, [SEG].")
    assert answer.count(seg) == 1 and tok.decode(answer) == "Sure, [SEG]."
    assert (
        tok.decode(tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>"))
        == "<img><IMG_CONTEXT><IMG_CONTEXT></img>"
    )
    assert len(tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>")) == 4


@pytest.mark.parametrize(
    "text",
    [
        "Please segment the blood vessel.",
        "  leading and trailing spaces  ",
        "line one\nline two\n\n\tindented\r\nend",
        "Digits 0123456789, punctuation !?;:'\"()[]{}<>/\\|-_+=*&^%$#@~` and  double  spaces.",
        "unseen words: zyxwvut qqq xkcd",
        CHAT + "<|im_start|>assistant\nSure, [SEG].<|im_end|>",
    ],
)
def test_round_trip(saved: tuple[Path, Qwen2TokenizerFast], text: str) -> None:
    _, tok = saved
    assert tok.decode(tok.encode(text)) == text


def test_slow_tokenizer_agrees(saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    path, tok = saved
    slow = Qwen2Tokenizer.from_pretrained(path)
    text = "Please segment the artery, 12 times.\nSure, [SEG]."
    assert slow.encode(text) == tok.encode(text)


def test_deterministic(tmp_path: Path, saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    path, _ = saved
    build_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (path / name).read_bytes()
    in_memory = build_tiny_tokenizer()
    assert in_memory.get_vocab() == AutoTokenizer.from_pretrained(path).get_vocab()


def test_add_sa2va_tokens_counts(saved: tuple[Path, Qwen2TokenizerFast]) -> None:
    path, _ = saved
    tok = AutoTokenizer.from_pretrained(path)
    assert add_sa2va_tokens(tok) == 0
    n = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<foo>"]}, replace_additional_special_tokens=False)
    assert add_sa2va_tokens(tok) == 0 and len(tok) == n + 1
