"""What every MLLM adapter of Sa2VA shares: the LLM-family description, LoRA on the LLM, embedding resize.

An adapter (``InternVLMLLM`` subclasses in :mod:`.internvl`, ``QwenVLMLLM`` subclasses in :mod:`.qwenvl`)
holds its vision tower as ``vision_model``, an optional trainable projector as ``mlp1`` and a causal LM
(a transformers ``PreTrainedModel`` with ``get_input_embeddings`` and an output head) as
``language_model``; :class:`~.sa2va.Sa2VAModel` assigns parts by these names. It exposes the contract
``Sa2VAModel`` uses: ``tokenizer``, ``template``, ``img_context_token_id`` (the image-slot token),
``num_image_token`` / ``vision_rows_per_output`` (image slots per vision-feature row, pixel rows per
feature row), ``encode_vit`` (frozen part, cacheable), ``decode`` (teacher-forced decoder pass without the
output head: the head's input and the ``[SEG]`` hidden states), ``head_logits`` (the output head on any
subset of positions), ``forward`` (both: logits at every position and the ``[SEG]`` hidden states) and
``generate_ids`` (greedy decoding for the predictor).

LoRA (:meth:`MLLMAdapter.apply_lora`) trains the input embedding and the LM head in one of three ways
(``train_embeddings``): ``True`` as the official recipe, full trainable copies (PEFT ``modules_to_save``),
whose frozen originals are released (:func:`release_frozen_originals`) unless ``keep_originals``;
``'new_tokens'``, only the rows of Sa2VA's added tokens (:data:`~.tokenizer.SPECIAL_TOKENS`) through PEFT's
``trainable_token_indices`` (not the official numerics: every other row stays frozen); ``False``, neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from mmengine.logging import MMLogger
from peft import LoraConfig, get_peft_model
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from transformers import PreTrainedModel

from .checkpointing import (
    CheckpointOption,
    apply_partial_policy,
    llm_decoder_layers,
    log_policy,
    resolve_policy,
)
from .tokenizer import SPECIAL_TOKENS
from .trainable_tokens import use_fast_trainable_tokens

__all__ = [
    "TRAIN_EMBEDDINGS_MODES",
    "LLMFamily",
    "MLLMAdapter",
    "ReleasedOriginal",
    "release_frozen_originals",
]

#: Values of ``train_embeddings`` (:meth:`MLLMAdapter.apply_lora`, ``Sa2VAModel(lora=dict(...))``).
TRAIN_EMBEDDINGS_MODES: tuple[bool | str, ...] = (True, False, "new_tokens")


class ReleasedOriginal(nn.Module):
    """What a PEFT ``ModulesToSaveWrapper`` holds as ``original_module`` once its frozen original is released.

    It holds one empty (0-element, frozen) parameter in place of each parameter of the original, so that
    ``model.parameters()`` lists as many tensors, in the same order, as before the release: mmengine builds
    the optimiser over every parameter, frozen ones included, and an ``iter_N.pth`` saved by a model that
    kept its originals indexes its optimiser state by that list (resume would otherwise refuse it). These
    placeholders are left out of ``state_dict``, and a state that holds tensors under this module is refused
    as unexpected by a strict load. Calling the module raises, naming it. The wrapper calls its original only
    with the adapter disabled or inactive, or when another adapter is added or the adapter is unloaded (peft
    0.21.2 ``ModulesToSaveWrapper``), none of which a Sa2VA model does.

    Args:
        name: module name inside the LM (``model.embed_tokens``), for error messages.
        original: the released module (``Embedding``, ``Linear``); only its class name, its weight's shape
            and dtype and its parameter names are kept.
    """

    def __init__(self, name: str, original: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.kind = type(original).__name__
        weight = original.weight
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype
        for pname, param in original.named_parameters():
            empty = nn.Parameter(param.new_empty(0), requires_grad=False)
            self.register_parameter(pname.replace(".", "__"), empty)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        return None  # the placeholders are no state

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix))

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError(
            f"the frozen original {self.kind} of {self.name!r} ({list(self.shape)}, {self.dtype}) was "
            "released to save memory (train_embeddings=True without keep_originals): the trained copy is the "
            "only one. Build the model with lora=dict(..., keep_originals=True) to disable or unload the "
            "adapter"
        )

    def extra_repr(self) -> str:
        return f"released {self.kind} of {self.name}: {list(self.shape)}, {self.dtype}"


def release_frozen_originals(lm: nn.Module) -> int:
    """Drop the frozen ``original_module`` of every PEFT ``ModulesToSaveWrapper`` in ``lm``.

    PEFT (0.21.2) deep-copies a ``modules_to_save`` module into a trainable copy and keeps the original,
    frozen, for disabling or unloading the adapter; while the adapter is active every forward uses the copy
    (``ModulesToSaveWrapper._forward_wrapped``), so training, the trainable checkpoint, the merged export
    (which writes the copy) and prediction never read the original. Each original becomes a
    :class:`ReleasedOriginal` (empty placeholders keep the parameter list's length and order). Returns the
    bytes released (for Sa2VA-4B shapes in bf16: the 151,936 x 2048 embedding and head, 1.16 GiB).
    """
    released = 0
    for name, module in list(lm.named_modules()):
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        if isinstance(module.original_module, ReleasedOriginal):
            continue
        original = module.original_module
        if not isinstance(getattr(original, "weight", None), torch.Tensor) or list(original.buffers()):
            raise TypeError(
                f"{name}: modules_to_save original {type(original).__name__} is not a weight-only module"
            )
        released += sum(t.numel() * t.element_size() for t in original.parameters())
        inner = name.split("base_model.model.", 1)[-1]
        module.original_module = ReleasedOriginal(inner, original)  # same slot: parameter order kept
    return released


@dataclass(frozen=True)
class LLMFamily:
    """What differs between LLM families, stated explicitly (never inferred from a path).

    Attributes:
        name: family name (``qwen2``, ``internlm2``).
        lora_targets: module names (last path component) of every linear layer of the decoder
            blocks that gets a LoRA adapter. The LM head is never one of them.
        embed_module: name of the input-embedding module (trained with LoRA: see ``train_embeddings``).
        head_module: name of the output-head module (trained with LoRA: see ``train_embeddings``).
        default_template: chat template name of :data:`xtuner.utils.PROMPT_TEMPLATE`.
    """

    name: str
    lora_targets: tuple[str, ...]
    embed_module: str
    head_module: str
    default_template: str


class MLLMAdapter(nn.Module):
    """Base of the MLLM adapters: LoRA, embedding resize and the LM accessors (see the module docstring).

    Subclasses set ``family`` and build ``tokenizer``, ``vision_model``, ``language_model`` and
    ``lora_applied = False`` in ``__init__``.
    """

    family: ClassVar[LLMFamily]
    #: Layout of the official HF folders of this family (``checkpoint.key_tables.HF_KEY_TABLES``).
    checkpoint_layout: ClassVar[str] = "internvl"
    #: Pixel rows of ``pixel_values`` per row of :meth:`encode_vit`'s output (InternVL: 1 tile -> 1 row
    #: of tokens; Qwen-VL: ``merge_size**2`` patches -> 1 token).
    vision_rows_per_output: int = 1
    language_model: nn.Module

    # --- forward ---------------------------------------------------------------------------------
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
        """Teacher-forced decoder pass without the output head (arguments: see :meth:`forward`).

        Returns:
            ``(head_input [B, L, H], seg_hidden [B, L, H])``: what the output head reads at each position
            (the final-norm output) and the hidden state the ``[SEG]`` feature is taken from (the same
            tensor, except for families whose official ``[SEG]`` feature is read before the final norm).
        """
        raise NotImplementedError

    def head_logits(self, head_input: torch.Tensor) -> torch.Tensor:
        """The LM output head (the trained copy under LoRA): ``[..., H] -> [..., V]`` logits."""
        return self.base_llm().get_output_embeddings()(head_input)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        vit_tokens: torch.Tensor | None = None,
        image_slots_checked: bool = False,
        image_grid_thw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced forward: :meth:`decode`, then the head at every position.

        Args:
            input_ids: ``[B, L]`` token ids with the family's image-slot tokens.
            attention_mask: ``[B, L]`` 1 for real tokens, 0 for padding.
            pixel_values: the family's vision input (see :meth:`encode_vit`).
            position_ids: the family's position ids (default: derived from ``input_ids``).
            vit_tokens: precomputed :meth:`encode_vit` output (feature cache); replaces ``pixel_values``.
            image_slots_checked: the image-slot count was checked on the host already (skips a sync).
            image_grid_thw: Qwen-VL only: ``[n_img, 3]`` patch grids.

        Returns:
            ``(logits [B, L, V], seg_hidden [B, L, H])``.
        """
        head_input, seg_hidden = self.decode(
            input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            position_ids=position_ids,
            vit_tokens=vit_tokens,
            image_slots_checked=image_slots_checked,
            image_grid_thw=image_grid_thw,
        )
        return self.head_logits(head_input), seg_hidden

    # --- structure -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.language_model.config.hidden_size)

    def base_llm(self) -> PreTrainedModel:
        """The transformers causal LM, with or without the PEFT wrapper around it."""
        lm = self.language_model
        return lm.get_base_model() if self.lora_applied else lm

    def enable_gradient_checkpointing(self, policy: CheckpointOption = True) -> None:
        """Set which activations are recomputed in backward (:mod:`.checkpointing`; replaces an earlier
        setting). ``True``: every LLM decoder layer and the vision encoder (:meth:`_checkpoint_everything`);
        ``N`` / a fraction: the first decoder layers, the vision encoder not.

        Raises:
            ValueError / TypeError: a bad ``policy`` (:func:`~.checkpointing.resolve_policy`).
        """
        lm = self.base_llm()
        resolved = resolve_policy(policy, len(llm_decoder_layers(lm)))
        if resolved.full:
            self._checkpoint_everything()
        else:
            apply_partial_policy(lm, resolved)
            self._stop_vision_checkpointing()
        log_policy(policy, resolved)

    def _checkpoint_everything(self) -> None:
        """Family hook: transformers' ``gradient_checkpointing_enable`` (``use_reentrant=False``) on the LM,
        and the vision encoder's checkpointing."""
        raise NotImplementedError

    def _stop_vision_checkpointing(self) -> None:
        """Family hook: the vision encoder's checkpointing off."""
        raise NotImplementedError

    def resize_token_embeddings(self) -> None:
        """Grow the LM embeddings and head to ``len(tokenizer)`` (new rows: mean init by transformers).

        Never shrinks: released LMs pad their vocabulary (Qwen2.5: 151936 rows for 151665 tokens).
        """
        n = len(self.tokenizer)
        if self.base_llm().get_input_embeddings().weight.shape[0] < n:
            self.base_llm().resize_token_embeddings(n, mean_resizing=True)

    def new_token_ids(self) -> list[int]:
        """Ids of Sa2VA's added tokens (:data:`~.tokenizer.SPECIAL_TOKENS`: ``[SEG]``, ``<p>``, ``</p>``,
        ``<vp>``, ``</vp>``) in the tokenizer, sorted: the rows ``train_embeddings='new_tokens'`` trains.

        Raises:
            ValueError: a token the tokenizer lacks, or an id beyond the LM's embedding rows.
        """
        rows = int(self.base_llm().get_input_embeddings().weight.shape[0])
        ids = []
        for token in SPECIAL_TOKENS:
            i = self.tokenizer.convert_tokens_to_ids(token)
            if i is None or i == self.tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token!r} token (new_tokens trains its rows)")
            if not 0 <= i < rows:
                raise ValueError(f"token {token!r} has id {i}, beyond the LM's {rows} embedding rows")
            ids.append(int(i))
        return sorted(set(ids))

    def apply_lora(
        self,
        *,
        r: int = 128,
        alpha: int = 256,
        dropout: float = 0.05,
        train_embeddings: bool | str = True,
        keep_originals: bool = False,
        fast_trainable_tokens: bool = True,
    ) -> None:
        """Wrap the LM with PEFT LoRA on every decoder linear layer (never the head).

        Args:
            r / alpha / dropout: LoRA rank, scale numerator and dropout.
            train_embeddings: how the input embedding and the LM head train (:data:`TRAIN_EMBEDDINGS_MODES`):
                ``True``, full trainable copies (PEFT ``modules_to_save``; the official recipe);
                ``'new_tokens'``, only the rows of :meth:`new_token_ids` (PEFT ``trainable_token_indices``
                on both; the other rows stay the frozen base weights); ``False``, both frozen.
            keep_originals: with ``train_embeddings=True``, keep PEFT's frozen originals of the two
                modules (needed only to disable or unload the adapter); by default they are released
                (:func:`release_frozen_originals`), which changes no computation.
            fast_trainable_tokens: with ``train_embeddings='new_tokens'``, give PEFT's trainable-token layers
                the forward of :mod:`.trainable_tokens` (same values, no per-step ``[V, H]`` weight copy or
                host->device copy of the ids); ``False`` keeps PEFT's own forward.
        """
        if self.lora_applied:
            raise RuntimeError("LoRA is already applied")
        if not (train_embeddings is True or train_embeddings is False or train_embeddings == "new_tokens"):
            raise ValueError(
                f"train_embeddings must be one of {TRAIN_EMBEDDINGS_MODES}, got {train_embeddings!r}"
            )
        fam = self.family
        expected = sum(
            1
            for name, _ in self.language_model.named_modules()
            if name.rsplit(".", 1)[-1] in fam.lora_targets
        )
        if expected == 0:
            raise ValueError(f"no module named {fam.lora_targets} in the {fam.name} LM: wrong adapter class?")
        ids = self.new_token_ids() if train_embeddings == "new_tokens" else None
        cfg = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            bias="none",
            target_modules=list(fam.lora_targets),
            modules_to_save=[fam.embed_module, fam.head_module] if train_embeddings is True else None,
            trainable_token_indices={fam.embed_module: ids, fam.head_module: ids} if ids else None,
        )
        self.language_model = get_peft_model(self.language_model, cfg)
        self.lora_applied = True
        if ids and fast_trainable_tokens:
            use_fast_trainable_tokens(self.language_model)
        if train_embeddings is True and not keep_originals:
            freed = release_frozen_originals(self.language_model)
            MMLogger.get_current_instance().info(
                f"LoRA: released the frozen originals of {fam.embed_module} and {fam.head_module} "
                f"({freed / 2**20:.1f} MiB; training uses their trainable copies)"
            )
        got = sum(1 for name, _ in self.language_model.named_modules() if name.endswith(".lora_A"))
        if got != expected:
            raise RuntimeError(f"LoRA wrapped {got} modules, expected {expected} ({fam.lora_targets})")
