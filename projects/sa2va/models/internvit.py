"""InternViT vision encoder (the ViT of InternVL / Sa2VA), written from its published architecture.

Parameter names match the official checkpoints after the ``vision_model.`` prefix, so a state dict
read from an official Sa2VA / InternVL safetensors folder loads with ``strict=True``:

    embeddings.class_embedding                 [1, 1, C]
    embeddings.patch_embedding.{weight, bias}  [C, 3, P, P], [C]      (Conv2d, stride P)
    embeddings.position_embedding              [1, 1 + (S/P)^2, C]
    encoder.layers.{i}.norm1 / norm2           LayerNorm (weight, bias) or RMSNorm (weight)
    encoder.layers.{i}.attn.qkv                [3C, C] (+ bias [3C] when qkv_bias)
    encoder.layers.{i}.attn.q_norm / k_norm    RMSNorm weight [C] (only when qk_normalization)
    encoder.layers.{i}.attn.proj               [C, C], [C]
    encoder.layers.{i}.ls1 / ls2               [C] layer scale
    encoder.layers.{i}.mlp.fc1 / fc2           [I, C], [C, I] (GELU between)

Block: ``x = x + drop_path(ls1 * attn(norm1(x)))``; ``x = x + drop_path(ls2 * mlp(norm2(x)))``.
No final norm: InternVL consumes the last layer's hidden state. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (no flash-attn dependency).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast_init import torch_init_disabled, trunc_normal_fp32_, weight_init_enabled

__all__ = [
    "InternRMSNorm",
    "InternVisionAttention",
    "InternVisionConfig",
    "InternVisionEmbeddings",
    "InternVisionEncoder",
    "InternVisionEncoderLayer",
    "InternVisionModel",
]

# Keys of an official ``vision_config`` that do not change the network: HF ``PretrainedConfig``
# bookkeeping / generation defaults and InternVL runtime switches. Any other unknown key raises.
_IGNORED_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_attn_implementation_autoset",
        "_commit_hash",
        "add_cross_attention",
        "architectures",
        "auto_map",
        "bad_words_ids",
        "begin_suppress_tokens",
        "bos_token_id",
        "chunk_size_feed_forward",
        "cross_attention_hidden_size",
        "decoder_start_token_id",
        "diversity_penalty",
        "do_sample",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "eos_token_id",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "id2label",
        "is_decoder",
        "is_encoder_decoder",
        "label2id",
        "length_penalty",
        "max_length",
        "min_length",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_return_sequences",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "pad_token_id",
        "prefix",
        "problem_type",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict",
        "return_dict_in_generate",
        "sep_token_id",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tie_encoder_decoder",
        "tie_word_embeddings",
        "tokenizer_class",
        "top_k",
        "top_p",
        "torch_dtype",
        "torchscript",
        "transformers_version",
        "typical_p",
        "use_bfloat16",
        "use_flash_attn",
        # Vision-MoE fields of InternVL3's vision_config (with use_moe false): the official remote code
        # (modeling_intern_vit.py) never reads them.
        "capacity_factor",
        "eval_capacity_factor",
        "laux_allreduce",
        "moe_coeff_ratio",
        "moe_intermediate_size",
        "moe_output_scale",
        "noisy_gate_policy",
        "num_experts",
        "num_routed_experts",
        "num_shared_experts",
        "shared_expert_intermediate_size",
        "use_residual",
        "use_rts",
        "use_weighted_residual",
    }
)

# Known keys whose value changes the network but which only one value is supported for.
_FIXED_CONFIG_VALUES: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("gelu",),
    "pruned_heads": ({}, None),
    "use_moe": (False,),
}

_NORM_TYPES = ("layer_norm", "rms_norm")


@dataclass
class InternVisionConfig:
    """Architecture of an InternViT encoder. Defaults are InternViT-300M-448px (InternVL2/2.5 1B-8B).

    ``initializer_range`` (std of the random init), ``dropout`` (after the attention / MLP output
    projections) and ``attention_dropout`` mirror the fields of an official ``vision_config``.
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    initializer_factor: float = 1.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.norm_type not in _NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} is not one of {_NORM_TYPES}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        """Patches per image at ``image_size``: ``(image_size // patch_size) ** 2``."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InternVisionConfig:
        """Build from the ``vision_config`` dict of an official InternVL / Sa2VA ``config.json``.

        HF bookkeeping keys (``architectures``, ``use_flash_attn``, ``_name_or_path``, generation
        defaults, ...) are ignored. ``model_type`` must be ``intern_vit_6b`` when present;
        ``hidden_act`` must be ``gelu``. Any other unknown key raises ``ValueError`` naming it,
        because it may change the architecture.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in fields:
                kwargs[key] = value
            elif key == "model_type":
                if value != "intern_vit_6b":
                    raise ValueError(f"vision_config model_type={value!r}, expected 'intern_vit_6b'")
            elif key in _FIXED_CONFIG_VALUES:
                if value not in _FIXED_CONFIG_VALUES[key]:
                    raise ValueError(
                        f"vision_config {key}={value!r} is not supported "
                        f"(supported: {_FIXED_CONFIG_VALUES[key]})"
                    )
            elif key not in _IGNORED_CONFIG_KEYS:
                raise ValueError(
                    f"vision_config key {key!r} (value {value!r}) is unknown to InternVisionConfig; "
                    "it may change the architecture"
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The ``vision_config`` dict an official ``config.json`` holds for this architecture."""
        out: dict[str, Any] = {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_act": "gelu",
            "use_flash_attn": True,
        }
        out.update(dataclasses.asdict(self))
        return out


class InternRMSNorm(nn.Module):
    """RMSNorm over the last dim: ``weight * x / sqrt(mean(x^2) + eps)``, statistics in >= fp32.

    Input/output: ``[..., C]``, output dtype = input dtype (the weight is applied after casting back).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        x = hidden_states.float() if hidden_states.element_size() < 4 else hidden_states
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(input_dtype)


def _make_norm(config: InternVisionConfig) -> nn.Module:
    if config.norm_type == "rms_norm":
        return InternRMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


def _drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (dim 0): zero whole residual branches with prob ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class InternVisionEmbeddings(nn.Module):
    """Patch + class token + position embeddings.

    ``forward(pixel_values [B, 3, H, W]) -> [B, 1 + (H/P)*(W/P), C]`` in the patch-embedding weight's
    dtype. The patch part of the position embedding (a ``sqrt(N) x sqrt(N)`` grid) is bicubically
    interpolated (align_corners=False, computed in fp32) to ``(H/P, W/P)`` when that differs.
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        self.num_patches = config.num_patches
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.zeros(1, self.num_positions, self.embed_dim))

    def _patch_position_embedding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Patch-grid position embedding ``[1, height*width, C]`` for a ``height x width`` patch grid."""
        pos = self.position_embedding[:, 1:]
        grid = self.image_size // self.patch_size
        if (height, width) == (grid, grid):
            return pos.to(dtype)
        pos = pos.float().reshape(1, grid, grid, self.embed_dim).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(height, width), mode="bicubic", align_corners=False)
        return pos.reshape(1, self.embed_dim, height * width).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))  # [B, C, h, w]
        batch, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)  # [B, h*w, C]
        class_embeds = self.class_embedding.expand(batch, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position = torch.cat(
            [
                self.position_embedding[:, :1].to(target_dtype),
                self._patch_position_embedding(height, width, target_dtype),
            ],
            dim=1,
        )
        return embeddings + position


class InternVisionAttention(nn.Module):
    """Multi-head self-attention with fused qkv, optional RMS q/k norm over the full C dim.

    ``forward(x [B, N, C]) -> [B, N, C]``.
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, channels = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, seq, 3, channels)
        q, k, v = qkv.unbind(2)  # each [B, N, C]
        if self.qk_normalization:
            q = self.q_norm(q)
            k = self.k_norm(k)
        # [B, N, C] -> [B, heads, N, head_dim]
        q, k, v = (t.reshape(batch, seq, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(1, 2).reshape(batch, seq, channels)
        return self.proj_drop(self.proj(out))


class InternMLP(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU. ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    """Pre-norm transformer block with layer scale and stochastic depth. ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, config: InternVisionConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _make_norm(config)
        self.attn = InternVisionAttention(config)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.norm2 = _make_norm(config)
        self.mlp = InternMLP(config)
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        x = x + _drop_path(self.attn(self.norm1(x)) * self.ls1, self.drop_path_rate, self.training)
        x = x + _drop_path(self.mlp(self.norm2(x)) * self.ls2, self.drop_path_rate, self.training)
        return x


class InternVisionEncoder(nn.Module):
    """Stack of ``num_hidden_layers`` blocks; drop-path rate rises linearly from 0 to ``drop_path_rate``.

    ``gradient_checkpointing``: when True and in training mode with grad enabled, each layer runs
    under ``torch.utils.checkpoint`` (``use_reentrant=False``).
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                hidden_states = checkpoint(layer, hidden_states, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states)
        return hidden_states


class InternVisionModel(nn.Module):
    """InternViT encoder: ``forward(pixel_values [T, 3, S, S]) -> last_hidden_state [T, 1 + (S/P)^2, C]``.

    ``pixel_values`` are ImageNet-normalised tiles (any float dtype; cast to the weights' dtype).
    The output is the last block's output (token 0 = CLS), no final norm, in the weights' dtype.
    Inputs whose size differs from ``config.image_size`` get an interpolated position embedding;
    S must be a multiple of P (non-square H x W also works).

    Random init (``_init_weights``; real runs load official weights over it): Linear and Conv2d
    weights truncated-normal(std=initializer_range), biases 0; norms weight 1 / bias 0; class and
    position embeddings truncated-normal(std=initializer_range); layer scales
    ``initializer_factor * ones`` (the official constructor's value; a full-strength residual keeps
    tiny test models sensitive to every layer). Truncated normals are drawn in float32 whatever the
    weights' dtype. ``_init_weights`` sets every tensor, so the submodules' default (Kaiming) init is
    not drawn; inside :func:`~.fast_init.no_weight_init` (weights loaded afterwards) nothing is drawn.
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        with torch_init_disabled():  # overwritten by _init_weights below
            self.embeddings = InternVisionEmbeddings(config)
            self.encoder = InternVisionEncoder(config)
        if weight_init_enabled():
            self.apply(self._init_weights)

    @property
    def gradient_checkpointing(self) -> bool:
        """Per-layer activation checkpointing during training (stored on the encoder)."""
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.encoder.gradient_checkpointing = bool(value)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """HF-style switch (kwargs are accepted and ignored: always ``use_reentrant=False``)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """HF-style switch off."""
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (that of the patch embedding)."""
        return self.embeddings.patch_embedding.weight.dtype

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d):
            trunc_normal_fp32_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, InternRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, InternVisionEmbeddings):
            trunc_normal_fp32_(module.class_embedding, std=std)
            trunc_normal_fp32_(module.position_embedding, std=std)
        elif isinstance(module, InternVisionEncoderLayer):
            nn.init.constant_(module.ls1, self.config.initializer_factor)
            nn.init.constant_(module.ls2, self.config.initializer_factor)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixel_values))
