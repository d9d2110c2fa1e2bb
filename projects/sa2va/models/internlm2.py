"""InternLM2 causal LM (the LLM of Sa2VA-8B / -26B), written for transformers 4.48 (which has none).

Parameter names and tensor layouts match the official InternLM2 Hugging Face checkpoints, so an official
``language_model.*`` state dict loads by name:

* ``model.tok_embeddings`` ``[V, H]``, ``output`` ``[V, H]`` (never tied in Sa2VA), ``model.norm``;
* per layer ``attention_norm`` / ``ffn_norm`` (RMSNorm), ``attention.wqkv`` ``[(nh + 2 * nkv) * d, H]``
  packed per KV head: for KV head ``j`` the rows hold its ``nh / nkv`` query heads, then its key head, then
  its value head (``d`` rows each); ``attention.wo`` ``[H, nh * d]``;
* SwiGLU feed-forward ``w2(silu(w1(x)) * w3(x))`` (``feed_forward.w1/w3`` ``[I, H]``, ``w2`` ``[H, I]``).

Rotary embeddings use the non-interleaved ("rotate half") convention with ``rope_theta``; ``rope_scaling``
may be ``None``, ``{"type": "dynamic", "factor": f}`` (NTK-aware base growth once the sequence is longer
than ``max_position_embeddings``, as the official configs use) or ``{"type": "linear", "factor": f}``.
Attention is ``torch.nn.functional.scaled_dot_product_attention`` with an explicit causal + padding mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

__all__ = ["InternLM2Config", "InternLM2ForCausalLM", "InternLM2Model"]

_ROPE_TYPES = ("dynamic", "linear")


class InternLM2Config(PretrainedConfig):
    """Configuration of an InternLM2 LM; the field names of the official ``config.json``.

    Fields without an architectural meaning that official configs carry (``auto_map``, ``bias``=False,
    ``attn_implementation``, ``pretraining_tp``...) are accepted and kept; ``bias=True`` is rejected.
    """

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 103168,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        bias: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attn_implementation = attn_implementation or "eager"
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"InternLM2Config: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"InternLM2Config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"InternLM2Config: hidden_act={self.hidden_act!r}; only 'silu' exists")
        if self.bias:
            raise ValueError("InternLM2Config: bias=True is not supported (no released model uses it)")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            factor = self.rope_scaling.get("factor")
            if kind not in _ROPE_TYPES:
                raise ValueError(
                    f"InternLM2Config: rope_scaling type {kind!r} is not supported (expected one of "
                    f"{_ROPE_TYPES} or rope_scaling=None)"
                )
            if not isinstance(factor, int | float) or factor < 1.0:
                raise ValueError(
                    f"InternLM2Config: rope_scaling factor must be a number >= 1, got {factor!r}"
                )


class InternLM2RMSNorm(nn.Module):
    """RMSNorm computed in float32: ``w * x / sqrt(mean(x^2) + eps)``; ``x``: ``[..., H]``."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    """Rotary position embedding with optional dynamic-NTK or linear scaling.

    ``inv_freq`` is recomputed from the config (non-persistent buffer), never loaded from a checkpoint.
    """

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.dim = config.hidden_size // config.num_attention_heads
        self.base = float(config.rope_theta)
        self.max_position_embeddings = int(config.max_position_embeddings)
        scaling = config.rope_scaling or {}
        self.scaling_type = scaling.get("type", scaling.get("rope_type"))
        self.factor = float(scaling.get("factor", 1.0))
        self.register_buffer("inv_freq", self._inv_freq(self.base), persistent=False)

    def _inv_freq(self, base: float, device: torch.device | None = None) -> torch.Tensor:
        exponent = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        return 1.0 / (base**exponent)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, ...]:
        """Cosines and sines for ``position_ids`` ``[B, L]`` -> two ``[B, L, d]`` tensors in ``x.dtype``.

        ``seq_len`` is the total key length (cache + new tokens); with dynamic scaling the base grows
        to ``base * (factor * seq_len / max_pos - (factor - 1)) ** (d / (d - 2))`` beyond ``max_pos``.
        """
        inv_freq = self.inv_freq
        if self.scaling_type == "dynamic" and seq_len > self.max_position_embeddings:
            ratio = self.factor * seq_len / self.max_position_embeddings - (self.factor - 1)
            inv_freq = self._inv_freq(self.base * ratio ** (self.dim / (self.dim - 2)), x.device)
        pos = position_ids.float()
        if self.scaling_type == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inv_freq.to(x.device).float()[None, None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, heads, L, d]``; ``cos``/``sin`` ``[B, L, d]``."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class InternLM2Attention(nn.Module):
    """Grouped-query self-attention with the packed ``wqkv`` projection."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.wqkv = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False
        )
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``wqkv`` output ``[B, L, (nh + 2 nkv) d]`` -> q ``[B, nh, L, d]``, k, v ``[B, nkv, L, d]``."""
        b, n, _ = qkv.shape
        qkv = qkv.view(b, n, self.num_kv_heads, self.groups + 2, self.head_dim)
        q = qkv[:, :, :, : self.groups].reshape(b, n, self.num_heads, self.head_dim)
        k, v = qkv[:, :, :, -2], qkv[:, :, :, -1]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        """``hidden`` ``[B, L, H]``; ``attn_mask`` ``[B, 1, L, L_total]`` bool (True = attend)."""
        b, n, _ = hidden.shape
        q, k, v = self.split_qkv(self.wqkv(hidden))
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        if self.groups > 1:
            k = k.repeat_interleave(self.groups, dim=1)
            v = v.repeat_interleave(self.groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.wo(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class InternLM2MLP(nn.Module):
    """SwiGLU: ``w2(silu(w1(x)) * w3(x))``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class InternLM2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``h = x + attn(norm(x)); out = h + ffn(norm(h))``.

    A transformers ``GradientCheckpointingLayer``: its own ``gradient_checkpointing`` switch recomputes it in
    backward (set on every layer by ``gradient_checkpointing_enable``, on some by :mod:`.checkpointing`)."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        hidden = hidden + self.attention(self.attention_norm(hidden), (cos, sin), attn_mask, past_key_values)
        return hidden + self.feed_forward(self.ffn_norm(hidden))


class InternLM2PreTrainedModel(PreTrainedModel):
    """Weight init and the transformers capability flags shared by the InternLM2 classes."""

    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


class InternLM2Model(InternLM2PreTrainedModel):
    """Embeddings + decoder layers + final norm (``model.*`` of the official checkpoints)."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = InternLM2RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_embeddings = value

    @staticmethod
    def build_mask(
        attention_mask: torch.Tensor | None, batch: int, q_len: int, past_len: int, device: torch.device
    ) -> torch.Tensor:
        """Boolean ``[B, 1, q_len, past_len + q_len]`` mask: causal AND key not padding.

        A query row with no visible key (a left-padding position) attends to itself only, so that
        SDPA never sees an all-masked row (its output there is irrelevant and ignored by the loss).
        """
        total = past_len + q_len
        q_pos = torch.arange(past_len, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None].expand(batch, 1, q_len, total)
        if attention_mask is not None:
            if attention_mask.shape != (batch, total):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected [{batch}, {total}] "
                    f"(past {past_len} + new {q_len} tokens)"
                )
            mask = mask & attention_mask.bool()[:, None, None, :]
            diag = (k_pos == q_pos)[None, None]
            mask = mask | (diag & ~mask.any(dim=-1, keepdim=True))
        return mask

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """``input_ids`` ``[B, L]`` or ``inputs_embeds`` ``[B, L, H]``; ``attention_mask`` ``[B, past + L]``.

        Returns ``last_hidden_state`` ``[B, L, H]`` (after the final norm), ``past_key_values`` (a
        :class:`DynamicCache` when ``use_cache``) and, with ``output_hidden_states``, the embeddings plus
        every layer output (``L_layers + 1`` tensors, the last one after the final norm).
        """
        if output_attentions:
            raise ValueError("InternLM2Model: output_attentions is not supported (SDPA attention)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("InternLM2Model: pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        b, n, _ = inputs_embeds.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        elif not use_cache:
            past_key_values = None
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + n, device=inputs_embeds.device)[None].expand(
                b, n
            )
        mask = self.build_mask(attention_mask, b, n, past_len, inputs_embeds.device)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids, past_len + n)

        hidden = inputs_embeds
        all_hidden: list[torch.Tensor] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            # a checkpointed layer (its own switch) runs with past_key_values=None
            hidden = layer(hidden, cos, sin, mask, past_key_values=past_key_values)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    """InternLM2 with the LM head ``output``; supports ``generate`` with a :class:`DynamicCache`."""

    _tied_weights_keys: list[str] = []

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.output

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.output = value

    def get_decoder(self) -> InternLM2Model:
        return self.model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
        num_logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits ``[B, L, V]`` (float of the head dtype); ``loss`` = next-token CE when ``labels`` given."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if num_logits_to_keep:
            hidden = hidden[:, -num_logits_to_keep:]
        logits = self.output(hidden)
        loss = None
        if labels is not None:
            shift = logits[:, :-1].float()
            loss = F.cross_entropy(
                shift.reshape(-1, shift.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = True,
        cache_position: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """New tokens only (``inputs_embeds`` on the first step when given), positions from the mask.

        With ``inputs_embeds``, ``input_ids`` holds only the generated tokens, so the number of new
        tokens comes from ``cache_position`` (given by ``generate``) or the cache length.
        """
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        first_with_embeds = inputs_embeds is not None and past_len == 0
        if first_with_embeds:
            n_new = inputs_embeds.shape[1]
        elif cache_position is not None:
            n_new = cache_position.shape[0]
        else:
            n_new = input_ids.shape[1] - past_len if inputs_embeds is None else 1
        if attention_mask is not None:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            position_ids = pos[:, -n_new:]
        elif position_ids is None:
            dev = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = torch.arange(past_len, past_len + n_new, device=dev)[None]
        inputs: dict[str, Any] = {
            "position_ids": position_ids,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
            "attention_mask": attention_mask,
        }
        if first_with_embeds:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids[:, -n_new:]
        return inputs
