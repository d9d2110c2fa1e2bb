"""Per-layer activation checkpointing of the LLM decoder layers: the ``gradient_checkpointing`` option of the
MLLM adapters (``mllm=dict(..., gradient_checkpointing=...)``).

Accepted values (``L`` = the LLM's decoder layers, e.g. 36 for Sa2VA-4B):

* ``False`` (default) or ``0``: nothing is recomputed.
* ``True``: every decoder layer and the vision encoder, through transformers'
  ``gradient_checkpointing_enable`` (``use_reentrant=False``): the behaviour of the boolean option before the
  policy existed, unchanged.
* an ``int`` ``N`` with ``0 <= N <= L``: the first ``N`` decoder layers (indices ``0 .. N-1``); the vision
  encoder is not checkpointed (it is frozen in every shipped config, and absent from the step with the
  feature cache; use ``True`` when it trains).
* a ``float`` ``f`` in ``(0, 1]``: the first ``ceil(f * L)`` decoder layers, as for an ``int``.

Which layers, and why the first ones: every layer's saved activations are alive
together at the end of the forward, ``(L - N) * A + N * X`` whichever ``N`` layers are checkpointed (``A``:
what a layer saves for backward; ``X``: its ``[B, L_seq, H]`` input, which a checkpointed layer keeps). They
differ during the backward, which runs from the last layer to the first, freeing each layer's activations as
it goes: a checkpointed layer recomputes its ``A`` when its backward starts. Checkpointing the last layer puts
that recompute at the start of the backward, on top of the stored activations of every layer below it
(``(L - N + 1) * A + N * X``: one layer's ``A`` above the end of the forward); checkpointing the first layers
puts it at the end, when the stored layers above have been freed (the peak stays ``(L - N) * A + N * X``).
The recompute cost is the same (one extra forward per checkpointed layer), so the first ``N`` give the lower
or equal peak. Other selections (every ``k``-th layer, explicit lists) are not offered: for the same ``N``
they cost the same time and never lower the peak.

Mechanism: transformers' own per-layer switch (4.57.1). Decoder layers deriving from
``transformers.modeling_layers.GradientCheckpointingLayer`` (Qwen2, Qwen2.5-VL, Qwen3-VL text layers, and
:class:`~.internlm2.InternLM2DecoderLayer`) run their ``__call__`` through
``self._gradient_checkpointing_func`` when ``self.gradient_checkpointing`` is set and the layer is in training
mode; ``gradient_checkpointing_enable`` sets both on every layer, :func:`checkpoint_decoder_layers` on the
chosen ones only. The function is ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which
restores the RNG state for the recompute (dropout masks, e.g. LoRA's, are the same as in the forward: losses
and gradients equal those without checkpointing). It wraps the layer's ``nn.Module.__call__``, so with
``compile_llm`` (the layers compiled in place, :mod:`.compile`) the compiled layer is what is recomputed;
PEFT's LoRA wrapping replaces the linear layers inside a decoder layer, never the decoder layer itself, so the
switches survive it and apply in either order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from mmengine.logging import MMLogger
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

#: What ``gradient_checkpointing`` accepts (see the module docstring).
CheckpointOption = bool | int | float


@dataclass(frozen=True)
class CheckpointPolicy:
    """A resolved ``gradient_checkpointing`` option.

    Attributes:
        layers: indices of the checkpointed decoder layers (the first ``len(layers)``).
        num_layers: the LLM's decoder layers.
        full: ``True`` was given: transformers' ``gradient_checkpointing_enable`` on the whole LM and the
            vision encoder's checkpointing (the adapters' original behaviour).
    """

    layers: tuple[int, ...]
    num_layers: int
    full: bool = False

    def describe(self) -> str:
        """One line for the log, e.g. ``'decoder layers 0-11 of 36'``."""
        if self.full:
            return f"all {self.num_layers} decoder layers and the vision encoder"
        if not self.layers:
            return f"none of the {self.num_layers} decoder layers"
        return f"decoder layers {self.layers[0]}-{self.layers[-1]} of {self.num_layers}"


def resolve_policy(option: CheckpointOption, num_layers: int) -> CheckpointPolicy:
    """The layers an option checkpoints.

    Args:
        option: ``False`` / ``True`` / an ``int`` ``N`` in ``[0, num_layers]`` / a ``float`` in ``(0, 1]``.
        num_layers: the LLM's decoder layers.

    Raises:
        ValueError: an ``int`` outside ``[0, num_layers]`` or a ``float`` outside ``(0, 1]`` (the message
            names the value and the layer count).
        TypeError: a value of another type (strings, lists, dicts, ``None``).
    """
    if isinstance(option, bool):
        if option:
            return CheckpointPolicy(tuple(range(num_layers)), num_layers, full=True)
        return CheckpointPolicy((), num_layers)
    if isinstance(option, int):
        if not 0 <= option <= num_layers:
            raise ValueError(
                f"gradient_checkpointing={option}: the number of checkpointed decoder layers must be in "
                f"[0, {num_layers}] (the LLM has {num_layers} decoder layers)"
            )
        return CheckpointPolicy(tuple(range(option)), num_layers)
    if isinstance(option, float):
        if not (0.0 < option <= 1.0):  # also refuses nan
            raise ValueError(
                f"gradient_checkpointing={option}: a fraction of the decoder layers must be in (0, 1] "
                f"(the LLM has {num_layers} decoder layers; use an int for a layer count)"
            )
        return CheckpointPolicy(tuple(range(math.ceil(option * num_layers))), num_layers)
    raise TypeError(
        f"gradient_checkpointing must be a bool, an int (decoder layers, 0..{num_layers}) or a float "
        f"fraction in (0, 1], got {type(option).__name__}: {option!r} (the LLM has {num_layers} decoder "
        "layers)"
    )


def llm_decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """``lm.model.layers`` of a transformers causal LM (the adapters' ``base_llm()``).

    Raises:
        TypeError: no non-empty ``ModuleList`` there.
    """
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"gradient_checkpointing: {type(lm).__name__} has no decoder layers at .model.layers")
    return layers


def checkpoint_decoder_layers(layers: nn.ModuleList, indices: tuple[int, ...] | list[int]) -> None:
    """Turn checkpointing on for ``layers[i]``, ``i`` in ``indices``, and off for every other layer
    (idempotent: the result depends on ``indices`` only, not on an earlier call).

    Raises:
        TypeError: a layer is not a ``GradientCheckpointingLayer`` (its class has no per-layer switch).
        ValueError: an index outside the layers.
    """
    chosen = set(indices)
    bad = sorted(i for i in chosen if not 0 <= i < len(layers))
    if bad:
        raise ValueError(
            f"gradient_checkpointing: layer indices {bad} outside the {len(layers)} decoder layers"
        )
    func = functools.partial(checkpoint, use_reentrant=False)
    for i, layer in enumerate(layers):
        if not isinstance(layer, GradientCheckpointingLayer):
            raise TypeError(
                f"gradient_checkpointing: decoder layer {i} ({type(layer).__name__}) is not a transformers "
                "GradientCheckpointingLayer: it has no per-layer checkpointing switch"
            )
        layer._gradient_checkpointing_func = func
        layer.gradient_checkpointing = i in chosen


def checkpointed_layers(layers: nn.ModuleList) -> list[int]:
    """Indices of the decoder layers whose checkpointing switch is on."""
    return [i for i, layer in enumerate(layers) if getattr(layer, "gradient_checkpointing", False)]


def apply_partial_policy(lm: nn.Module, policy: CheckpointPolicy) -> None:
    """Apply a non-``full`` policy to a transformers causal LM: :func:`checkpoint_decoder_layers` with the
    policy's layers, the decoder's own (model-level) switch off (in the decoders here it only turns
    ``use_cache`` off, which the training forward passes as ``False`` anyway), and ``config.use_cache`` off
    when any layer is checkpointed. The vision encoder is the adapter's business."""
    if policy.full:
        raise ValueError("apply_partial_policy: a full policy goes through gradient_checkpointing_enable")
    layers = llm_decoder_layers(lm)
    if len(layers) != policy.num_layers:
        raise ValueError(f"policy for {policy.num_layers} decoder layers applied to an LM with {len(layers)}")
    checkpoint_decoder_layers(layers, policy.layers)
    if hasattr(lm.model, "gradient_checkpointing"):
        lm.model.gradient_checkpointing = False
    if policy.layers and getattr(lm, "config", None) is not None:
        lm.config.use_cache = False


def log_policy(option: CheckpointOption, policy: CheckpointPolicy) -> None:
    """One info line (mmengine logger) naming the checkpointed layers."""
    MMLogger.get_current_instance().info(f"gradient_checkpointing={option!r}: {policy.describe()} recomputed")
