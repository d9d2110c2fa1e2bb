"""InternVL multimodal LLM adapters: InternViT -> pixel shuffle -> ``mlp1`` -> a causal LM.

Parameter names match the official Sa2VA / InternVL Hugging Face checkpoints (``vision_model.*``,
``mlp1.*``, ``language_model.*``) so that real checkpoints load through a plain key table.

One adapter class per LLM family (:class:`Qwen2InternVL`, ...): each declares its LoRA target
modules and the embedding / head modules trained as full copies, by exact module name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from ..hf_folder import read_hf_config as read_checked_hf_config
from ..pixels import model_pixels
from ..special_tokens import IMG_CONTEXT_TOKEN
from .builder import build_component
from .checkpointing import CheckpointOption
from .fast_init import default_dtype, torch_init_disabled
from .internvit import InternVisionConfig, InternVisionModel
from .mllm import LLMFamily, MLLMAdapter
from .tokenizer import add_sa2va_tokens


def pixel_shuffle(x: torch.Tensor, ps_version: str = "v2") -> torch.Tensor:
    """InternVL's 0.5 pixel shuffle (space-to-depth by 2).

    Args:
        x: ``[T, h, w, C]`` patch grid (``h``, ``w`` even).
        ps_version: ``'v2'`` (InternVL 1.5+, every released Sa2VA) keeps the grid orientation;
            ``'v1'`` returns the grid transposed, as the first InternVL release did.

    Returns:
        ``[T, h/2, w/2, 4C]``; output token ``(a, b)`` holds the channels of input tokens
        ``(2a, 2b), (2a, 2b+1), (2a+1, 2b), (2a+1, 2b+1)`` in that order.
    """
    t, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"pixel_shuffle needs an even patch grid, got {h}x{w}")
    y = x.reshape(t, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(t, h // 2, w // 2, 4 * c)
    if ps_version == "v1":
        y = y.transpose(1, 2)
    elif ps_version != "v2":
        raise ValueError(f"unknown ps_version {ps_version!r} (expected 'v1' or 'v2')")
    return y


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a Hugging Face model folder; invalid JSON and missing or wrong shape fields
    raise ``HFFolderError`` naming the file and field (:func:`~..hf_folder.read_hf_config`)."""
    return read_checked_hf_config(path)


class InternVLMLLM(MLLMAdapter):
    """InternVL: InternViT vision encoder + ``mlp1`` projector + a causal LM.

    Args:
        tokenizer: tokenizer object or config dict; Sa2VA's special tokens are added if missing
            and the LM's embeddings are resized to ``len(tokenizer)``.
        vision_config: ``vision_config`` dict of an InternVL ``config.json`` (or
            :class:`InternVisionConfig` fields).
        llm_config: ``llm_config`` dict of an InternVL ``config.json`` (the family's HF config).
        path: a Hugging Face Sa2VA / InternVL folder; its ``config.json`` supplies the two configs
            and the other fields when they are not given. Weights are loaded by the caller.
        downsample_ratio: pixel-shuffle ratio (only 0.5 exists).
        ps_version: pixel-shuffle version (``'v2'``).
        select_layer: ViT layer whose output feeds ``mlp1`` (-1: the last).
        torch_dtype: dtype of the built weights (``None``: float32).
        gradient_checkpointing: which activations are recomputed in backward (:mod:`.checkpointing`):
            ``False``; ``True`` (every LLM decoder layer and the ViT); an ``int`` ``N`` (the first ``N``
            decoder layers); a ``float`` in ``(0, 1]`` (that fraction of them, rounded up).
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        vision_config: dict | None = None,
        llm_config: dict | None = None,
        path: str | None = None,
        downsample_ratio: float | None = None,
        ps_version: str | None = None,
        select_layer: int | None = None,
        torch_dtype: str | torch.dtype | None = None,
        gradient_checkpointing: CheckpointOption = False,
    ) -> None:
        super().__init__()
        hf = read_hf_config(path) if path is not None else {}
        vision_config = vision_config if vision_config is not None else hf.get("vision_config")
        llm_config = llm_config if llm_config is not None else hf.get("llm_config")
        if vision_config is None or llm_config is None:
            raise ValueError("InternVL adapter needs `path` or both `vision_config` and `llm_config`")
        self.path = path
        self.downsample_ratio = float(downsample_ratio or hf.get("downsample_ratio", 0.5))
        if self.downsample_ratio != 0.5:
            raise ValueError(f"only downsample_ratio=0.5 is supported, got {self.downsample_ratio}")
        self.ps_version = ps_version or hf.get("ps_version", "v2")
        self.select_layer = int(select_layer if select_layer is not None else hf.get("select_layer", -1))
        if self.select_layer != -1:
            raise ValueError(
                f"only select_layer=-1 (the last ViT layer) is supported, got {self.select_layer}"
            )
        self.template = hf.get("template", self.family.default_template)
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype

        self.tokenizer = build_component(tokenizer)
        add_sa2va_tokens(self.tokenizer)

        self.vision_config = InternVisionConfig.from_dict(dict(vision_config))
        self.llm_config_dict = dict(llm_config)
        # Built directly in `dtype` (no float32 copy). The LM's own `_init_weights` (transformers)
        # sets every Linear / Embedding weight, so torch's default init of them is not drawn first.
        with default_dtype(dtype):
            self.vision_model = InternVisionModel(self.vision_config)
        with torch_init_disabled():
            self.language_model = self.build_llm(self.llm_config_dict, dtype)
        vit_dim = self.vision_config.hidden_size
        llm_dim = self.language_model.config.hidden_size
        with default_dtype(dtype):
            self.mlp1 = nn.Sequential(
                nn.LayerNorm(vit_dim * 4),
                nn.Linear(vit_dim * 4, llm_dim),
                nn.GELU(),
                nn.Linear(llm_dim, llm_dim),
            )
        if dtype is not None:  # tensors a constructor creates with an explicit dtype
            self.vision_model.to(dtype)
            self.mlp1.to(dtype)
        patches = self.vision_config.image_size // self.vision_config.patch_size
        self.num_image_token = int((patches * self.downsample_ratio) ** 2)
        self.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        self.lora_applied = False
        if gradient_checkpointing is not False:
            self.enable_gradient_checkpointing(gradient_checkpointing)

    # --- family hooks ----------------------------------------------------------------------------
    def build_llm(self, llm_config: dict, dtype: torch.dtype | None) -> PreTrainedModel:
        """Build the family's causal LM with random weights from its HF config dict.

        Called with ``torch.nn.init`` disabled: the model's own ``_init_weights`` (run by transformers'
        ``post_init``) must set every weight that is not a constant of its constructor.
        """
        raise NotImplementedError

    @property
    def build_dtype(self) -> torch.dtype:
        """The dtype the model was built in: that of its frozen ViT patch embedding (never upcast)."""
        return self.vision_model.embeddings.patch_embedding.weight.dtype

    def _checkpoint_everything(self) -> None:
        lm = self.base_llm()
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        self.vision_model.gradient_checkpointing = True

    def _stop_vision_checkpointing(self) -> None:
        self.vision_model.gradient_checkpointing = False

    # --- forward ---------------------------------------------------------------------------------
    def encode_vit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen part: ViT last hidden state without the CLS token, ``[T, (S/P)^2, C_vit]``.

        ``pixel_values``: ``[T, 3, S, S]`` normalised float tiles, or uint8 pixels (normalised here).
        """
        weight = self.vision_model.embeddings.patch_embedding.weight
        return self.vision_model(model_pixels(pixel_values, weight.device).to(weight.dtype))[:, 1:, :]

    def project_vit(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """Trainable part: pixel shuffle + ``mlp1``: ``[T, N, C_vit] -> [T, N/4, hidden_size]``."""
        t, n, c = vit_tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"ViT produced {n} patch tokens, not a square grid")
        grid = pixel_shuffle(vit_tokens.reshape(t, side, side, c), self.ps_version)
        x = grid.reshape(t, -1, 4 * c)
        return self.mlp1(x.to(self.mlp1[0].weight.dtype))

    def embed(
        self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None, slots_checked: bool = False
    ) -> torch.Tensor:
        """Token embeddings with the image tokens written into the ``<IMG_CONTEXT>`` positions.

        Args:
            input_ids: ``[B, L]``.
            image_tokens: ``[T, num_image_token, H]`` for the tiles of the batch, in order.
            slots_checked: the ``<IMG_CONTEXT>`` count was already checked on the host (data
                preprocessor); skips the count here, which is a device-to-host sync.

        Returns:
            ``[B, L, H]``.
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_img = input_ids == self.img_context_token_id
        if slots_checked and image_tokens is not None:
            flat = image_tokens.reshape(-1, image_tokens.shape[-1]).to(embeds.dtype)
            return embeds.masked_scatter(is_img[..., None], flat)
        n_slots = int(is_img.sum())
        if image_tokens is None:
            if n_slots:
                raise ValueError(
                    f"input_ids hold {n_slots} {IMG_CONTEXT_TOKEN} tokens but no image was given"
                )
            return embeds
        flat = image_tokens.reshape(-1, image_tokens.shape[-1]).to(embeds.dtype)
        if flat.shape[0] != n_slots:
            raise ValueError(
                f"{flat.shape[0]} image tokens ({image_tokens.shape[0]} tiles x {image_tokens.shape[1]}) "
                f"for {n_slots} {IMG_CONTEXT_TOKEN} positions"
            )
        return embeds.masked_scatter(is_img[..., None], flat)

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        vit_tokens: torch.Tensor | None = None,
        image_slots_checked: bool = False,
        image_grid_thw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder pass without the output head.

        Args:
            input_ids: ``[B, L]`` token ids.
            attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
            pixel_values: ``[T, 3, S, S]`` tiles of all images of the batch, in order.
            position_ids: ``[B, L]`` (default: 0..L-1).
            vit_tokens: precomputed :meth:`encode_vit` output ``[T, N, C_vit]`` (feature cache);
                replaces ``pixel_values``.
            image_grid_thw: must be ``None`` (Qwen-VL inputs; InternVL tiles have a fixed grid).

        Returns:
            ``(hidden [B, L, H], hidden [B, L, H])``: the last layer after the final norm (the decoder's
            ``last_hidden_state``, which is ``hidden_states[-1]`` of the causal LM's output) is both the
            head's input and the ``[SEG]`` feature.
        """
        if image_grid_thw is not None:
            raise ValueError("image_grid_thw is a Qwen-VL input; InternVL takes fixed-size tiles")
        if vit_tokens is None and pixel_values is not None:
            vit_tokens = self.encode_vit(pixel_values)
        image_tokens = self.project_vit(vit_tokens) if vit_tokens is not None else None
        embeds = self.embed(input_ids, image_tokens, slots_checked=image_slots_checked)
        # The decoder is `.model` of both families' causal LMs (Qwen2ForCausalLM, InternLM2ForCausalLM); read
        # as an attribute (not get_decoder(), which unwraps a torch.compile'd decoder on transformers 4.57).
        out = self.base_llm().model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            return_dict=True,
        )
        hidden = out.last_hidden_state
        return hidden, hidden

    @torch.no_grad()
    def generate_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vit_tokens: torch.Tensor,
        generation_config: GenerationConfig,
        image_grid_thw: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy decoding from left-padded prompts (transformers ``generate`` with a KV cache).

        Args:
            input_ids / attention_mask: ``[B, L]`` left-padded prompts with their ``<IMG_CONTEXT>`` slots.
            vit_tokens: ``[T, N, C_vit]`` :meth:`encode_vit` output of all tiles, in sample order.
            generation_config: greedy settings (eos / stop strings / budget).
            **kwargs: passed to ``generate`` (e.g. ``tokenizer`` for stop strings).

        Returns:
            ``[B, n]`` the new tokens only (``n <= max_new_tokens``).
        """
        if image_grid_thw is not None:
            raise ValueError("image_grid_thw is a Qwen-VL input; InternVL takes fixed-size tiles")
        embeds = self.embed(input_ids, self.project_vit(vit_tokens))
        # With only `inputs_embeds`, transformers returns the new tokens alone.
        out = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, generation_config=generation_config, **kwargs
        )
        return out.sequences


class Qwen2InternVL(InternVLMLLM):
    """InternVL with a Qwen2 / Qwen2.5 LM (Sa2VA-1B, -4B, InternVL3-based Sa2VA)."""

    family = LLMFamily(
        name="qwen2",
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        embed_module="embed_tokens",
        head_module="lm_head",
        default_template="qwen_chat",
    )

    def build_llm(self, llm_config: dict, dtype: torch.dtype | None) -> PreTrainedModel:
        cfg = {k: v for k, v in llm_config.items() if k not in ("architectures", "auto_map", "_name_or_path")}
        config = Qwen2Config(**cfg)
        # Sa2VA checkpoints store `lm_head` apart from `embed_tokens` and LoRA trains both as separate
        # copies, so they are never tied here (even for Qwen2.5-0.5B, whose base config ties them).
        config.tie_word_embeddings = False
        config.use_cache = False
        # transformers >= 4.56 builds in `config.dtype` when no dtype is given: state the build dtype.
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        return Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)


class InternLM2InternVL(InternVLMLLM):
    """InternVL with an InternLM2 / InternLM2.5 LM (Sa2VA-8B, -26B); LM from :mod:`.internlm2`."""

    family = LLMFamily(
        name="internlm2",
        lora_targets=("wqkv", "wo", "w1", "w2", "w3"),
        embed_module="tok_embeddings",
        head_module="output",
        default_template="internlm2_chat",
    )

    def build_llm(self, llm_config: dict, dtype: torch.dtype | None) -> PreTrainedModel:
        from .internlm2 import InternLM2Config, InternLM2ForCausalLM

        drop = ("architectures", "auto_map", "_name_or_path", "model_type")
        config = InternLM2Config(**{k: v for k, v in llm_config.items() if k not in drop})
        config.tie_word_embeddings = False
        config.use_cache = False
        dtype = dtype if dtype is not None else torch.get_default_dtype()  # not config.dtype (4.57)
        return InternLM2ForCausalLM._from_config(config, dtype=dtype)
