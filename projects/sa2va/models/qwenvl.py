"""Qwen-VL MLLM adapters (Sa2VA-Qwen2_5-VL-3B/7B, Sa2VA-Qwen3-VL-2B/4B) over transformers' own classes.

The vision tower and the text decoder are transformers' ``Qwen2_5_VL*`` / ``Qwen3VL*`` modules, built from
the folder's ``config.json`` (the Sa2VA config *is* a Qwen-VL config: ``text_config``, ``vision_config`` and
the image token ids at the top level). They are taken out of a ``*ForConditionalGeneration`` built once, so
the random initialisation is transformers' own, and re-homed under the adapter names every Sa2VA adapter
uses: ``vision_model`` (the whole vision tower with its merger(s); frozen in the official recipe) and
``language_model`` (:class:`QwenVLCausalLM`: the text decoder + ``lm_head``; LoRA on its linear layers,
``embed_tokens`` / ``lm_head`` trained as full copies). There is no separate projector (``mlp1``).

Forward (teacher-forced), as transformers' ``Qwen*VLModel.forward`` composes it:
token embeddings with the vision tokens scattered into the ``<|image_pad|>`` positions, 3-row M-RoPE
position ids from the model class's own ``get_rope_index``, and for Qwen3-VL the DeepStack features added
after the first decoder layers at the image positions. The ``[SEG]`` hidden state is
``output.hidden_states[-1]`` of the text model, which is what the official code reads: after the final
norm for Qwen2.5-VL, before it for Qwen3-VL (transformers 4.57 collects Qwen3-VL hidden states as the
decoder layers' outputs).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
)

from .builder import build_component
from .checkpointing import CheckpointOption
from .internvl import read_hf_config
from .mllm import LLMFamily, MLLMAdapter
from .tokenizer import add_sa2va_tokens

__all__ = [
    "IMAGE_PAD_TOKEN",
    "VISION_END_TOKEN",
    "VISION_START_TOKEN",
    "Qwen2_5_VLSa2VA",
    "Qwen3VLSa2VA",
    "QwenVLCausalLM",
    "QwenVLMLLM",
]

IMAGE_PAD_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"

#: What the Qwen-VL families share: LoRA on every text-decoder linear layer, the official module names.
_QWEN_VL_FAMILY = dict(
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    embed_module="embed_tokens",
    head_module="lm_head",
    default_template="qwen_chat",
)
#: Qwen-VL config fields naming vision token ids -> the token.
_VISION_TOKEN_FIELDS = {
    "image_token_id": IMAGE_PAD_TOKEN,
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": VISION_START_TOKEN,
    "vision_end_token_id": VISION_END_TOKEN,
}
#: ``config.json`` entries that are not arguments of the Qwen-VL config class.
_NOT_CONFIG_ARGS = (
    "architectures",
    "auto_map",
    "_name_or_path",
    "model_type",
    "template",
    "transformers_version",
)


class QwenVLCausalLM(PreTrainedModel):
    """A Qwen-VL text decoder with its output head: the ``language_model`` part of a Qwen-VL adapter.

    Holds transformers' ``Qwen2_5_VLTextModel`` / ``Qwen3VLTextModel`` as ``model`` and the head as
    ``lm_head`` (the official names, so PEFT's ``modules_to_save=['embed_tokens', 'lm_head']`` and the
    LoRA targets resolve as in the official recipe). The modules are passed in already initialised;
    nothing is re-initialised here.

    Args:
        config: the ``text_config`` of the Qwen-VL config.
        model: the text decoder.
        lm_head: ``Linear(hidden, vocab, bias=False)``.
    """

    # The attention kernels are the decoder's own; the wrapper adds none.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self, config: PretrainedConfig, model: nn.Module, lm_head: nn.Linear, *, seg_hidden_pre_norm: bool
    ) -> None:
        super().__init__(config)
        self.model = model
        self.lm_head = lm_head
        self.seg_hidden_pre_norm = seg_hidden_pre_norm

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def decode(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        **visual: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder pass without the head.

        Args:
            inputs_embeds: ``[B, L, H]`` token embeddings with the vision tokens written in.
            attention_mask: ``[B, L]`` 1 for real tokens.
            position_ids: ``[3, B, L]`` M-RoPE positions (temporal, height, width rows).
            **visual: Qwen3-VL DeepStack inputs (``visual_pos_masks [B, L]`` bool,
                ``deepstack_visual_embeds``: list of ``[N_img, H]``).

        Returns:
            ``(head_input [B, L, H], seg_hidden [B, L, H])``: ``head_input`` is the final-norm output;
            ``seg_hidden`` is the last decoder layer's output before the final norm when
            ``seg_hidden_pre_norm``, ``head_input`` itself otherwise (what
            ``*ForConditionalGeneration(...).hidden_states[-1]`` holds for the family).
        """
        captured: list[torch.Tensor] = []
        hook = None
        if self.seg_hidden_pre_norm:

            def keep(module: nn.Module, args: Any, output: Any) -> None:
                captured.append(output[0] if isinstance(output, tuple) else output)

            hook = self.model.layers[-1].register_forward_hook(keep)
        try:
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                return_dict=True,
                **visual,
            )
        finally:
            if hook is not None:
                hook.remove()
        head_input = out.last_hidden_state
        return head_input, captured[0] if captured else head_input

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        **visual: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode`, then the head at every position: ``(logits [B, L, V], seg_hidden [B, L, H])``."""
        head_input, seg_hidden = self.decode(inputs_embeds, attention_mask, position_ids, **visual)
        return self.lm_head(head_input), seg_hidden


class QwenVLMLLM(MLLMAdapter):
    """Sa2VA's MLLM for the Qwen-VL families; subclasses name the transformers classes.

    Args:
        tokenizer: tokenizer object or config dict (a Qwen2 tokenizer holding ``<|image_pad|>``,
            ``<|vision_start|>``, ``<|vision_end|>``); Sa2VA's tokens are added if missing.
        config: the Sa2VA Qwen-VL ``config.json`` as a dict (``text_config``, ``vision_config``, token ids;
            absent token ids are taken from the tokenizer); default: read from ``path``.
        path: a Sa2VA Qwen-VL Hugging Face folder (weights are loaded by the caller).
        torch_dtype: dtype of the built weights (``None``: float32).
        gradient_checkpointing: which activations are recomputed in backward (:mod:`.checkpointing`):
            ``False``; ``True`` (every decoder layer and the vision tower); an ``int`` ``N`` (the first ``N``
            decoder layers); a ``float`` in ``(0, 1]`` (that fraction of them, rounded up).

    Attributes:
        config: the Qwen-VL config (the M-RoPE index reads it).
        img_context_token_id: id of ``<|image_pad|>`` (= ``config.image_token_id``, checked).
        num_image_token: LLM image tokens per row of :meth:`encode_vit`'s output (1).
        vision_rows_per_output: patch rows of ``pixel_values`` per vision token (``merge_size**2``).
    """

    config_class: ClassVar[type[PretrainedConfig]]
    hf_model_class: ClassVar[type[PreTrainedModel]]  # *ForConditionalGeneration
    rope_model_class: ClassVar[type]  # the class whose get_rope_index is used
    checkpoint_layout = "qwen_vl"
    official_architecture: ClassVar[str] = "Sa2VAChatModelQwen"
    #: Processor defaults of the family's ``preprocessor_config.json`` (written by a source-less export).
    image_mean: ClassVar[tuple[float, float, float]]
    image_std: ClassVar[tuple[float, float, float]]
    #: Whether the official ``[SEG]`` feature (``hidden_states[-1]`` of the transformers model) is the last
    #: decoder layer's output before the final norm (Qwen3-VL) or after it (Qwen2.5-VL).
    seg_hidden_pre_norm: ClassVar[bool]
    num_image_token = 1

    def __init__(
        self,
        *,
        tokenizer: Any,
        config: dict | None = None,
        path: str | None = None,
        torch_dtype: str | torch.dtype | None = None,
        gradient_checkpointing: CheckpointOption = False,
    ) -> None:
        super().__init__()
        hf = read_hf_config(path) if path is not None else {}
        cfg = dict(config if config is not None else hf)
        if "text_config" not in cfg or "vision_config" not in cfg:
            where = f"{path}/config.json" if path is not None else "`config`"
            raise ValueError(f"{where}: a Qwen-VL config needs `text_config` and `vision_config`")
        self.path = path
        self.template = cfg.get("template") or self.family.default_template
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        self.tokenizer = build_component(tokenizer)
        add_sa2va_tokens(self.tokenizer, internvl_tokens=False)
        # Random-weight configs may leave the vision token ids out: they are the tokenizer's then.
        for field, token in _VISION_TOKEN_FIELDS.items():
            if field not in cfg:
                cfg[field] = self.tokenizer.convert_tokens_to_ids(token)
        self.config = self.config_class(**{k: v for k, v in cfg.items() if k not in _NOT_CONFIG_ARGS})
        # Sa2VA trains embed_tokens and lm_head as separate copies: never tied (the base models tie them).
        self.config.tie_word_embeddings = False
        self.config.text_config.tie_word_embeddings = False
        self.config.use_cache = False

        self.img_context_token_id = self._token_id(IMAGE_PAD_TOKEN, self.config.image_token_id)
        self._token_id(VISION_START_TOKEN, self.config.vision_start_token_id)
        self._token_id(VISION_END_TOKEN, self.config.vision_end_token_id)

        # dtype stated explicitly: transformers 4.57 builds in config.json's `torch_dtype` when given None.
        full = self.hf_model_class._from_config(
            self.config, attn_implementation="sdpa", dtype=dtype or torch.float32
        )
        self.vision_model = full.model.visual
        self.language_model = QwenVLCausalLM(
            self.config.text_config,
            full.model.language_model,
            full.lm_head,
            seg_hidden_pre_norm=self.seg_hidden_pre_norm,
        )
        self.vision_rows_per_output = int(self.config.vision_config.spatial_merge_size) ** 2
        self.lora_applied = False
        if gradient_checkpointing is not False:
            self.enable_gradient_checkpointing(gradient_checkpointing)

    def _token_id(self, token: str, expected: int) -> int:
        got = self.tokenizer.convert_tokens_to_ids(token)
        if got is None or got == self.tokenizer.unk_token_id or got != expected:
            raise ValueError(
                f"tokenizer maps {token} to {got}, the Qwen-VL config expects {expected}: tokenizer and "
                f"config.json are from different models (path={self.path})"
            )
        return int(got)

    @property
    def hidden_size(self) -> int:
        return int(self.config.text_config.hidden_size)

    def _checkpoint_everything(self) -> None:
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        self.base_llm().model.gradient_checkpointing_enable(**kwargs)
        self.vision_model.gradient_checkpointing_enable(**kwargs)

    def _stop_vision_checkpointing(self) -> None:
        self.vision_model.gradient_checkpointing_disable()

    @property
    def build_dtype(self) -> torch.dtype:
        """The dtype the frozen vision tower was built in."""
        return next(self.vision_model.parameters()).dtype

    # --- forward ---------------------------------------------------------------------------------
    def encode_vit(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Frozen part: the whole vision tower (merger and DeepStack mergers included).

        Args:
            pixel_values: ``[P, C*T*p*p]`` float patches of all images (the Qwen-VL image processor's
                output: normalised, merge-block order), ``P = sum(t * h * w)``.
            image_grid_thw: ``[n_img, 3]`` long ``(t, h, w)`` patch grid per image.

        Returns:
            ``[P / merge**2, (1 + D) * H]``: per vision token its embedding followed by its ``D`` DeepStack
            features (Qwen3-VL; ``D = 0`` for Qwen2.5-VL), concatenated on the channel axis.
        """
        if image_grid_thw is None:
            raise ValueError("Qwen-VL vision needs image_grid_thw")
        weight = next(self.vision_model.parameters())
        out = self.vision_model(
            pixel_values.to(weight.device, weight.dtype), grid_thw=image_grid_thw.to(weight.device)
        )
        if isinstance(out, tuple):  # Qwen3-VL: (embeds, [deepstack features])
            embeds, deep = out
            return torch.cat([embeds, *deep], dim=-1)
        return out

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
            input_ids: ``[B, L]``; an image is ``<|vision_start|>`` ``<|image_pad|>`` * n ``<|vision_end|>``.
            attention_mask: ``[B, L]`` 1 for real tokens.
            pixel_values: ``[P, C*T*p*p]`` patches (see :meth:`encode_vit`).
            position_ids: ``[3, B, L]``; default: the model class's ``get_rope_index``.
            vit_tokens: precomputed :meth:`encode_vit` output (feature cache); replaces ``pixel_values``.
            image_slots_checked: the ``<|image_pad|>`` count was checked on the host already.
            image_grid_thw: ``[n_img, 3]`` patch grids, in the order of the images in the batch.

        Returns:
            ``(head_input [B, L, H], seg_hidden [B, L, H])`` (see :meth:`QwenVLCausalLM.decode`).
        """
        if vit_tokens is None and pixel_values is not None:
            vit_tokens = self.encode_vit(pixel_values, image_grid_thw)
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_img = input_ids == self.img_context_token_id
        visual: dict[str, Any] = {}
        if vit_tokens is not None:
            if image_grid_thw is None:
                raise ValueError("image features given without image_grid_thw")
            feats = vit_tokens.to(embeds.dtype).split(self.hidden_size, dim=-1)
            if not image_slots_checked and int(is_img.sum()) != feats[0].shape[0]:
                raise ValueError(
                    f"{feats[0].shape[0]} vision tokens for {int(is_img.sum())} {IMAGE_PAD_TOKEN} positions"
                )
            embeds = embeds.masked_scatter(is_img[..., None], feats[0])
            if len(feats) > 1:
                visual = {"visual_pos_masks": is_img, "deepstack_visual_embeds": list(feats[1:])}
        elif not image_slots_checked and bool(is_img.any()):
            raise ValueError(f"input_ids hold {IMAGE_PAD_TOKEN} tokens but no image was given")
        if position_ids is None:
            position_ids = self.rope_index(input_ids, image_grid_thw, attention_mask)
        return self.base_llm().decode(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **visual
        )

    def rope_index(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[3, B, L]`` M-RoPE position ids from transformers' ``get_rope_index`` (reads only ``config``)."""
        grid = image_grid_thw.to(input_ids.device) if image_grid_thw is not None else None
        positions, _ = self.rope_model_class.get_rope_index(
            self, input_ids=input_ids, image_grid_thw=grid, attention_mask=attention_mask
        )
        return positions

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
        """Greedy decoding by repeated full teacher-forced forwards (no KV cache; short answers).

        Each step appends the argmax of the last position's logits; a row stops at an
        ``eos_token_id`` of ``generation_config``. Multi-token stop strings are cut by the caller.

        Returns:
            ``[B, n]`` the new tokens (rows that stopped early are padded with ``pad_token_id``).
        """
        stop = generation_config.eos_token_id
        stop = sorted(set([stop] if isinstance(stop, int) else (stop or [])))
        stop_ids = torch.tensor(stop, device=input_ids.device, dtype=input_ids.dtype)
        pad = generation_config.pad_token_id if generation_config.pad_token_id is not None else 0
        ids, mask = input_ids, attention_mask
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new: list[torch.Tensor] = []
        # Vision tokens are never generated (a generated <|image_pad|> would have no image features).
        banned = [self.config.image_token_id, self.config.video_token_id]
        banned += [self.config.vision_start_token_id, self.config.vision_end_token_id]
        for _ in range(int(generation_config.max_new_tokens)):
            logits, _ = self(ids, attention_mask=mask, vit_tokens=vit_tokens, image_grid_thw=image_grid_thw)
            last = logits[:, -1].clone()
            last[:, banned] = float("-inf")
            nxt = last.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt)
            done |= torch.isin(nxt, stop_ids)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done | (nxt != pad))[:, None].to(mask.dtype)], dim=1)
            if bool(done.all()):
                break
        return torch.stack(new, dim=1)


class Qwen2_5_VLSa2VA(QwenVLMLLM):  # noqa: N801 (the transformers family name)
    """Sa2VA-Qwen2_5-VL-3B / -7B: transformers ``Qwen2_5_VLForConditionalGeneration`` parts."""

    family = LLMFamily(name="qwen2_5_vl", **_QWEN_VL_FAMILY)
    config_class = Qwen2_5_VLConfig
    hf_model_class = Qwen2_5_VLForConditionalGeneration
    rope_model_class = Qwen2_5_VLModel
    seg_hidden_pre_norm = False
    image_mean = (0.48145466, 0.4578275, 0.40821073)
    image_std = (0.26862954, 0.26130258, 0.27577711)


class Qwen3VLSa2VA(QwenVLMLLM):
    """Sa2VA-Qwen3-VL-2B / -4B: transformers ``Qwen3VLForConditionalGeneration`` parts (DeepStack)."""

    family = LLMFamily(name="qwen3_vl", **_QWEN_VL_FAMILY)
    config_class = Qwen3VLConfig
    hf_model_class = Qwen3VLForConditionalGeneration
    rope_model_class = Qwen3VLModel
    seg_hidden_pre_norm = True
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
