"""Markers that user text (annotation texts, prompts) must not contain.

The prompt builder writes these itself: ``[SEG]`` (one per answered object), the image placeholder
``<image>`` and its expansion ``<img>`` / ``<IMG_CONTEXT>`` * n / ``</img>``, the visual-prompt tokens
``<p>``, ``</p>``, ``<vp>``, ``</vp>``, and the chat template's role markers (``<|im_start|>``,
``<|im_end|>``, InternLM2's ``[UNUSED_TOKEN_146]``, ``<s>``, ...). In user text they would be
tokenised as those special tokens: an extra ``[SEG]`` or ``<IMG_CONTEXT>`` breaks the count checks at
the first batch, a role marker silently changes the conversation.
"""

from __future__ import annotations

import re

__all__ = ["RESERVED_MARKERS", "ReservedTextError", "check_user_text", "find_reserved_markers"]

#: Exact markers (case-sensitive, as the tokenizers match them).
RESERVED_MARKERS: tuple[str, ...] = (
    "[SEG]",
    "<image>",
    "<IMG_CONTEXT>",
    "<img>",
    "</img>",
    "<p>",
    "</p>",
    "<vp>",
    "</vp>",
    "<s>",
    "</s>",
)
#: Template marker families: ``<|im_start|>``-style role markers and InternLM2's ``[UNUSED_TOKEN_n]``.
_MARKER_PATTERNS = re.compile(r"<\|[^|<>\s]{1,40}\|>|\[UNUSED_TOKEN_\d+\]")


class ReservedTextError(ValueError):
    """User text holds a marker reserved for the prompt builder (the message names it)."""


def find_reserved_markers(text: str) -> list[str]:
    """The reserved markers found in ``text``, in order of first appearance, each once."""
    found: dict[int, str] = {}
    for marker in RESERVED_MARKERS:
        pos = text.find(marker)
        if pos >= 0:
            found.setdefault(pos, marker)
    for m in _MARKER_PATTERNS.finditer(text):
        found.setdefault(m.start(), m.group())
    out: list[str] = []
    for _, marker in sorted(found.items()):
        if marker not in out:
            out.append(marker)
    return out


def check_user_text(text: str, where: str) -> str:
    """Return ``text`` unchanged, or raise :class:`ReservedTextError` naming ``where`` and the markers."""
    markers = find_reserved_markers(text)
    if markers:
        raise ReservedTextError(
            f"{where}: {text!r} contains {', '.join(markers)}, reserved for the prompt the model is given "
            "(the image and [SEG] tokens and the chat template's markers are added by the toolkit); "
            "remove them from the text"
        )
    return text
