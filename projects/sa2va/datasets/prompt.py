"""Prompt pieces shared by training data (:class:`RefSegDataset`) and inference (the predictor).

Both build the first user turn the same way: ``<image>\\n`` + question inside the chat template's
``INSTRUCTION``, then the single ``<image>`` placeholder becomes
``<img>`` + ``<IMG_CONTEXT>`` * (num_image_token * tiles) + ``</img>`` at the token level. The
official Sa2VA inference replaces ``<image>`` in the text and encodes the whole string; because the
image tokens are special (added) tokens the tokenizer splits the text at them, so the two give the
same ids.

Where the official tokenisation puts BOS (:func:`prefix_ids`): the official ``predict_forward`` encodes
the prompt with ``tokenizer.encode(text)`` (special tokens added), and the official training
tokenisation (xtuner's ``encode_fn`` / Sa2VA's ``tokenize_conversation``) puts
``get_bos_eos_token_ids(tokenizer)[0]`` before the first turn, and before every later turn only when the
template's ``SUFFIX_AS_EOS`` is false (then an EOS ends every answer). InternLM2 (sentencepiece,
``add_bos_token``) gets ``<s>`` in both; Qwen2 tokenizers get nothing in both.
"""

from __future__ import annotations

from typing import Any

from .image_processing import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN

__all__ = ["IMAGE_PLACEHOLDER", "encode_with_image", "image_question", "instruction_text", "prefix_ids"]

IMAGE_PLACEHOLDER = "<image>"


def prefix_ids(tokenizer: Any) -> list[int]:
    """Ids the tokenizer puts before a text when it adds special tokens: ``[bos]`` or ``[]``.

    ``[1]`` (``<s>``) for an InternLM2 tokenizer (``add_bos_token``), ``[]`` for Qwen2 tokenizers (no
    bos). Read from the tokenizer itself (``encode`` with and without special tokens), so it is what the
    official ``predict_forward`` gets; the tests check it equals xtuner's training rule
    (``get_bos_eos_token_ids``) for every supported family.

    Raises:
        ValueError: the tokenizer adds something other than its bos token in front.
    """
    probe = "a"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix = list(full[:start])
            break
    else:  # pragma: no cover - a tokenizer that rewrites the text itself when adding special tokens
        raise ValueError(f"{type(tokenizer).__name__}: cannot find the text ids {plain} in {full}")
    bos = tokenizer.bos_token_id
    if prefix not in ([], [bos]):
        raise ValueError(
            f"{type(tokenizer).__name__} adds {prefix} before a text; only its bos token ({bos}) is supported"
        )
    return prefix


def image_question(question: str) -> str:
    """``<image>\\n`` + ``question`` (the first human turn); unchanged if it already holds ``<image>``."""
    if IMAGE_PLACEHOLDER in question:
        return question
    return IMAGE_PLACEHOLDER + "\n" + question


def instruction_text(template: dict, question: str) -> str:
    """One user turn in the chat template, ending where the assistant answer starts.

    Args:
        template: an xtuner ``PROMPT_TEMPLATE`` entry (needs ``INSTRUCTION`` with ``{input}``).
        question: the user text (with ``<image>`` for the first turn).
    """
    if "INSTRUCTION" not in template:
        raise KeyError(f"chat template has no 'INSTRUCTION' entry (keys: {sorted(template)})")
    # `round` / `bot_name` are fields of some xtuner templates; unused ones are ignored by format().
    return template["INSTRUCTION"].format(input=question, round=1, bot_name="BOT")


def encode_with_image(
    tokenizer: Any,
    text: str,
    *,
    num_tiles: int,
    num_image_token: int,
    image_tokens: tuple[str, str, str] = (IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN),
) -> list[int]:
    """Encode ``text`` (no special tokens added), splicing the image tokens in for ``<image>``.

    Args:
        tokenizer: a Hugging Face tokenizer holding ``<img>``, ``</img>``, ``<IMG_CONTEXT>``.
        text: text with at most one ``<image>``.
        num_tiles: InternVL tiles of the image (thumbnail included).
        num_image_token: LLM tokens per tile (256 for 448 px tiles).
        image_tokens: ``(start, slot, end)`` token strings (InternVL ``<img> <IMG_CONTEXT> </img>``; the
            Qwen-VL families ``<|vision_start|> <|image_pad|> <|vision_end|>`` with one "tile" per slot).

    Returns:
        token ids; ``<image>`` -> ``[<img>] + [<IMG_CONTEXT>] * (num_image_token * num_tiles) + [</img>]``.
    """

    def enc(s: str) -> list[int]:
        return tokenizer.encode(s, add_special_tokens=False)

    count = text.count(IMAGE_PLACEHOLDER)
    if count == 0:
        return enc(text)
    if count > 1:
        raise ValueError(
            f"text holds {count} {IMAGE_PLACEHOLDER} placeholders, expected at most one: {text!r}"
        )
    if num_tiles < 1 or num_image_token < 1:
        raise ValueError(f"need num_tiles >= 1 and num_image_token >= 1, got {num_tiles}, {num_image_token}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in image_tokens}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks the image tokens {missing}; call add_sa2va_tokens() first")
    pre, post = text.split(IMAGE_PLACEHOLDER, 1)
    n_context = num_image_token * num_tiles
    start, slot, end = image_tokens
    image_ids = [ids[start]] + [ids[slot]] * n_context + [ids[end]]
    return enc(pre) + image_ids + enc(post)
