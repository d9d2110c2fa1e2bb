"""A forward for PEFT's ``TrainableTokensLayer`` (``trainable_token_indices``; ``lora=dict(train_embeddings=
'new_tokens')``) that builds no merged copy of the weight and copies no token ids to the device per call.

PEFT 0.21's forward (``TrainableTokensLayer.get_merged_weights``) makes ``torch.tensor(token_indices)`` on the
host and moves it to the weight's device at every call (a blocking host->device copy on CUDA), then writes the
trained rows into an out-of-place ``index_copy`` of the whole ``[V, H]`` weight; its backward builds the
``[V, H]`` gradient of that copy (for the head a full ``[V, H]`` matmul) only to read the trained rows
from it.

:class:`FastTrainableTokensLayer` keeps PEFT's module, parameters, buffers, state-dict keys, ``merge`` /
``unmerge`` / ``unload`` and the mixed-batch path (``forward_adapters``) unchanged and overrides only
``forward``:

* embedding ``[...] -> [..., H]``: the lookup in the frozen base weight, then ``torch.where`` puts the delta
  rows at the positions of the trained ids (a cached vocabulary-sized map id -> slot, ``-1`` for the others);
* head (``nn.Linear`` ``[..., H] -> [..., V]``, no bias): the base logits from the frozen weight, then the
  columns of the trained ids, ``x @ delta.T`` ``[..., n]``, written into them (``index_copy_`` on the fresh
  logits, which nothing saved for backward; autograd-safe).

Only one active, enabled, unmerged adapter takes the fast path; a disabled adapter, a merged layer or
several active adapters go through PEFT's own ``forward`` (same values as before). Base layers whose
configuration the fast forward does not reproduce are refused by :func:`make_fast` (``ValueError``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch import nn

__all__ = ["FastTrainableTokensLayer", "make_fast", "use_fast_trainable_tokens"]


class FastTrainableTokensLayer(TrainableTokensLayer):
    """PEFT's ``TrainableTokensLayer`` with a copy-free ``forward`` (see the module docstring).

    Instances are made by :func:`make_fast` (a ``__class__`` swap of a layer PEFT built), never constructed.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Embedding ``[...]`` ids -> ``[..., H]``; head ``[..., H]`` -> ``[..., V]`` (PEFT's values)."""
        active = self.active_adapters
        if self.disable_adapters or self.merged or len(active) != 1 or args or kwargs:
            return super().forward(x, *args, **kwargs)
        name = active[0]
        base = self.base_layer
        weight = base.weight
        ids, slot, pad_slot = self._token_index(name, weight.device)
        delta = self.trainable_tokens_delta[name].to(weight)
        if isinstance(base, nn.Embedding):
            out = F.embedding(x, weight, padding_idx=base.padding_idx)
            s = slot[x]  # [...] slot of each id, -1 for the untrained ids
            rows = F.embedding(s.clamp(min=0), delta, padding_idx=pad_slot)
            out = torch.where((s >= 0).unsqueeze(-1), rows, out)
            embed_scale = self._get_embed_scale()
            if embed_scale is not None:
                out = out * embed_scale.to(out.dtype)
            return out
        # nn.Linear head (checked by make_fast): PEFT's F.linear(x, merged weight), no bias
        logits = F.linear(x, weight)
        return logits.index_copy_(-1, ids, F.linear(x, delta))

    def _token_index(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """``(ids [n] int64, slot [V] int64, pad_slot)`` on ``device``: the trained ids, the map id -> slot
        in the delta (``-1`` for the other ids) and the slot of the base's ``padding_idx`` (``None`` if it is
        not trained).

        Built on the host once per adapter / device / id list / padding index (rebuilt after a move), so the
        forward makes no host->device copy and no device->host sync.
        """
        cache = self.__dict__.setdefault("_fast_token_index", {})
        indices = [int(i) for i in self.token_indices[name]]
        pad = getattr(self.base_layer, "padding_idx", None)
        key = (device, tuple(indices), pad)
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            slot = torch.full((self.base_layer.weight.shape[0],), -1, dtype=torch.long)
            slot[indices] = torch.arange(len(indices))
            pad_slot = indices.index(pad) if pad in indices else None
            ids = torch.tensor(indices, dtype=torch.long).to(device)
            hit = cache[name] = (key, ids, slot.to(device), pad_slot)
        return hit[1], hit[2], hit[3]


def _check_supported(layer: TrainableTokensLayer, where: str) -> None:
    base = layer.base_layer
    if isinstance(base, nn.Embedding):
        bad = {
            "max_norm": base.max_norm is not None,
            "scale_grad_by_freq": base.scale_grad_by_freq,
            "sparse": base.sparse,
        }
        named = [k for k, v in bad.items() if v]
        if named:
            raise ValueError(
                f"fast trainable tokens: {where} wraps an nn.Embedding with {named}, which the fast forward "
                "does not reproduce; build with lora=dict(fast_trainable_tokens=False)"
            )
    elif isinstance(base, nn.Linear):
        if base.bias is not None:
            raise ValueError(
                f"fast trainable tokens: {where} wraps an nn.Linear with a bias (PEFT's forward drops it); "
                "build with lora=dict(fast_trainable_tokens=False)"
            )
    else:
        raise ValueError(
            f"fast trainable tokens: {where} wraps a {type(base).__name__}, not an nn.Embedding or nn.Linear"
        )


def make_fast(layer: TrainableTokensLayer, where: str = "the layer") -> None:
    """Give one PEFT-built ``TrainableTokensLayer`` the copy-free forward (in place, ``__class__`` swap).

    Raises:
        ValueError: ``layer`` is not exactly PEFT's ``TrainableTokensLayer``, or its base layer is neither an
            ``nn.Embedding`` without ``max_norm`` / ``scale_grad_by_freq`` / ``sparse`` nor a bias-free
            ``nn.Linear``; ``where`` names it in the message.
    """
    if type(layer) is FastTrainableTokensLayer:
        return
    if type(layer) is not TrainableTokensLayer:
        raise ValueError(
            f"fast trainable tokens: {where} is a {type(layer).__name__}, not PEFT's TrainableTokensLayer"
        )
    _check_supported(layer, where)
    layer.__class__ = FastTrainableTokensLayer


def use_fast_trainable_tokens(model: nn.Module) -> list[str]:
    """:func:`make_fast` on every PEFT ``TrainableTokensLayer`` in ``model``; returns their module names.

    Raises:
        ValueError: ``model`` has none (built without ``trainable_token_indices``), or one is unsupported.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, TrainableTokensLayer):
            make_fast(module, where=name)
            names.append(name)
    if not names:
        raise ValueError(
            "fast trainable tokens: the model has no PEFT TrainableTokensLayer (trainable_token_indices)"
        )
    return names
