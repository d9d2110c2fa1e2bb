"""Sa2VA / InternVL special tokens, the family-aware tokenizer loader and a tiny offline Qwen2 tokenizer.

Token id layout mirrors the official models: an InternVL tokenizer already holds the InternVL tokens
(``<img>`` ... ``</box>``) right after the LLM's own special tokens, and Sa2VA appends
``[SEG] <p> </p> <vp> </vp>`` after them. ``add_sa2va_tokens`` adds whatever is missing in that order.
``load_tokenizer`` opens the tokenizer of any official folder without remote code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2TokenizerFast

from ..special_tokens import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, SEG_TOKEN
from .internlm2_tokenizer import INTERNLM2_TOKENIZER_CLASSES, load_internlm2_tokenizer

__all__ = [
    "INTERNVL_TOKENS",
    "QWEN_CHAT_TOKENS",
    "SEG_TOKEN",
    "SPECIAL_TOKENS",
    "TINY_VOCAB_SIZE",
    "add_sa2va_tokens",
    "build_tiny_tokenizer",
    "load_tokenizer",
    "tiny_corpus",
]

SPECIAL_TOKENS: list[str] = [SEG_TOKEN, "<p>", "</p>", "<vp>", "</vp>"]
INTERNVL_TOKENS: list[str] = [
    IMG_START_TOKEN,
    IMG_END_TOKEN,
    IMG_CONTEXT_TOKEN,
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
QWEN_CHAT_TOKENS: list[str] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: Target size of the byte-level BPE vocabulary of the tiny tokenizer (before special tokens).
TINY_VOCAB_SIZE = 800

# Qwen2's pre-tokenisation split: contractions, letter runs (with one leading non-letter), single
# digits, punctuation runs, newline runs, other whitespace.
_QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def load_tokenizer(path: str | Path, **kwargs) -> PreTrainedTokenizerBase:
    """The tokenizer of a Hugging Face folder, chosen by its family, never with ``trust_remote_code``.

    ``path/tokenizer_config.json``'s ``tokenizer_class`` decides: ``InternLM2Tokenizer`` (Sa2VA-8B / -26B,
    remote code upstream) -> :func:`~.internlm2_tokenizer.load_internlm2_tokenizer`; any class transformers
    has (Qwen2 for Sa2VA-1B / -4B / InternVL3 ...) -> ``AutoTokenizer.from_pretrained(path,
    trust_remote_code=False)``. ``kwargs`` go to the loader.

    Raises:
        FileNotFoundError: no ``tokenizer_config.json`` in ``path``.
        ValueError: a ``tokenizer_class`` that only remote code defines (named with the file).
    """
    path = Path(path)
    cfg_file = path / "tokenizer_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{cfg_file} not found: `path` must be a Hugging Face folder with a tokenizer"
        )
    try:
        tokenizer_class = json.loads(cfg_file.read_text()).get("tokenizer_class")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    if tokenizer_class in INTERNLM2_TOKENIZER_CLASSES:
        return load_internlm2_tokenizer(path, **kwargs)
    import transformers

    if tokenizer_class is not None and not hasattr(transformers, tokenizer_class):
        raise ValueError(
            f"{cfg_file}: tokenizer_class {tokenizer_class!r} is defined only by remote code; supported "
            f"without it: the classes of transformers {transformers.__version__} and "
            f"{list(INTERNLM2_TOKENIZER_CLASSES)}"
        )
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def _special(token: str) -> AddedToken:
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def add_sa2va_tokens(tokenizer: PreTrainedTokenizerBase, *, internvl_tokens: bool = True) -> int:
    """Add the missing InternVL tokens (if ``internvl_tokens``), then the missing Sa2VA tokens, as specials.

    Tokens are ``AddedToken(t, special=True, normalized=False)`` (no stripping), registered as
    ``additional_special_tokens`` (existing ones kept). Returns the number of new ids; resize the LLM
    embeddings to ``len(tokenizer)`` afterwards. The Qwen-VL families use their own vision tokens and
    add only :data:`SPECIAL_TOKENS` (``internvl_tokens=False``).
    """
    existing = set(tokenizer.get_vocab())
    registered = {str(t) for t in tokenizer.additional_special_tokens}
    wanted = (INTERNVL_TOKENS if internvl_tokens else []) + SPECIAL_TOKENS
    missing = [t for t in wanted if t not in existing or t not in registered]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": [_special(t) for t in missing]},
        replace_additional_special_tokens=False,
    )


_OBJECTS = (
    "blood vessel",
    "blood vessels",
    "artery",
    "vein",
    "retinal vessel",
    "optic disc",
    "cell",
    "nucleus",
    "tumor",
    "lesion",
    "polyp",
    "liver",
    "lung",
    "heart",
    "person",
    "man",
    "woman",
    "child",
    "dog",
    "cat",
    "horse",
    "car",
    "bus",
    "bicycle",
    "road",
    "tree",
    "building",
    "sky",
    "water",
    "left hand",
    "red ball",
    "white cup",
)
_QUESTIONS = (
    "Please segment the {}.",
    "Please segment {} in this image.",
    "Can you segment the {} in this image?",
    "Could you provide a segmentation mask for the {}?",
    "What is the {} in this image? Please respond with a segmentation mask.",
    "Where is the {}? Please output the segmentation mask.",
    "Segment the {}.",
)
_ANSWERS = (
    "Sure, [SEG].",
    "It is [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
_GENERAL = (
    "You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog.",
    "This image shows a retinal fundus photograph with many thin blood vessels.",
    "The vessels are one to three pixels wide, so the mask must be very precise.",
    "We fine-tune the model on our own data and report the Dice score and the IoU.",
    "Training loss: 0.4123, validation Dice: 0.7849, threshold: 0.35, epoch 12 of 40.",
    "It's a small test; we'll see if they've done it, and I'm sure you'd like that.",
    "Describe the image in detail. There is a person riding a bicycle on the road.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 448 512 960 999 1024 2048.",
    "Punctuation: , . ; : ! ? ' \" ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ `",
    "Coordinates (x1, y1, x2, y2) = [12, 34, 56, 78]; ratio = 0.5; size 448x448.",
    "def main():\n    return 0\n",
    "Line one.\nLine two.\n\nA new paragraph\twith a tab.",
)


def tiny_corpus() -> Iterator[str]:
    """Small fixed English corpus: chat-formatted segmentation dialogues plus general text."""
    for i, obj in enumerate(_OBJECTS):
        for j, question in enumerate(_QUESTIONS):
            answer = _ANSWERS[(i + j) % len(_ANSWERS)]
            prefix = "<image>\n" if j == 0 else ""
            yield f"user\n{prefix}{question.format(obj)}\nassistant\n{answer}\n"
    for _ in range(3):
        yield from _GENERAL


def _train_backend(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE (Qwen2 layout: NFC, regex split + byte level, no unk)."""
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    tok.add_special_tokens([_special(t) for t in QWEN_CHAT_TOKENS])
    return tok


def build_tiny_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A tiny deterministic Qwen2-style tokenizer (byte-level BPE, ~800 ids) built offline.

    Ids: BPE vocab, then ``<|endoftext|> <|im_start|> <|im_end|>``, then ``INTERNVL_TOKENS``, then
    ``SPECIAL_TOKENS``. ``<|endoftext|>`` is eos and pad; no bos / unk (as Qwen2 base models);
    ``<|im_start|>``, ``<|im_end|>`` and the added tokens are ``additional_special_tokens``.
    Byte-level: ``decode(encode(s)) == s`` for any NFC text. If ``save_dir`` is given the tokenizer is
    saved there (``tokenizer.json``, ``tokenizer_config.json`` with ``tokenizer_class``
    ``Qwen2Tokenizer``, ``vocab.json``, ``merges.txt``, ...) and the reloaded one is returned.
    """
    backend = _train_backend(TINY_VOCAB_SIZE)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[_special(t) for t in QWEN_CHAT_TOKENS[1:]],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    add_sa2va_tokens(tokenizer)
    if save_dir is None:
        return tokenizer
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(save_dir))
    return AutoTokenizer.from_pretrained(str(save_dir))
