"""The special-token strings that the data pipeline writes and the model looks up (one definition each).

``<img>`` + ``<IMG_CONTEXT>`` * (image tokens) + ``</img>`` stands for an image in the InternVL prompt
(:func:`~projects.sa2va.datasets.image_processing.image_token_string`); the model finds its image slots by
the id of ``<IMG_CONTEXT>``. Each ``[SEG]`` in an answer becomes one mask prompt. The tokenizer adds them
in the official order (:mod:`projects.sa2va.models.tokenizer`).
"""

from __future__ import annotations

__all__ = ["IMG_CONTEXT_TOKEN", "IMG_END_TOKEN", "IMG_START_TOKEN", "SEG_TOKEN"]

SEG_TOKEN = "[SEG]"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
