"""Loading a ``.pth`` of trainable tensors into a built :class:`~projects.sa2va.models.sa2va.Sa2VAModel`.

What ``model.pretrained_pth`` in a config names; :func:`~projects.sa2va.engine.builder.construct_model`
calls :func:`load_trainable_checkpoint` right after it built the model (LoRA applied). The file is read
with ``torch.load(weights_only=True)`` (:func:`~.safe_load.load_checkpoint_file`); a state in this
toolkit's naming is loaded strictly (every trainable tensor, nothing else), a state in the reference
naming (``mllm.model.*``, e.g. from ``tools/convert_to_pth.py``) through
:func:`~.reference_pth.load_reference_state`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .reference_pth import is_reference_state, load_reference_state
from .safe_load import load_checkpoint_file, trainable_state_from_checkpoint

__all__ = ["load_trainable_checkpoint", "load_trainable_state"]


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state of trainable tensors into ``model``: a reference-naming state (``mllm.model.*``)
    through :func:`~.reference_pth.load_reference_state`, else ``model.load_state_dict(strict=True)``.

    ``source`` (the file it came from) starts every error message.

    Raises:
        KeyError: keys that do not match the model's trainable tensors.
    """
    if is_reference_state(state):
        load_reference_state(model, state, source=str(source))
        return
    try:
        model.load_state_dict(state, strict=True)
    except KeyError as e:
        raise KeyError(f"{source}: {e}") from None


def load_trainable_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the trainable tensors in ``path`` (``{'state_dict': ...}`` or a bare dict) into ``model``
    (:func:`load_trainable_state`).

    Raises:
        FileNotFoundError: no such file. KeyError: keys that do not match the model's trainable tensors
            (the message starts with ``path``).
    """
    load_trainable_state(model, trainable_state_from_checkpoint(load_checkpoint_file(path)), path)
