"""Sa2VA for training: the teacher-forced forward with [SEG] -> text_hidden_fcs -> SAM2 mask decoder.

``Sa2VAModel`` receives its parts from the config (an InternVL MLLM adapter, a SAM2 grounding
encoder, a mask loss) and declares, per part, whether it is frozen, LoRA-adapted or fully trained.
Inference with generation lives in a separate predictor class.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from ..special_tokens import SEG_TOKEN
from ..structures import Sa2VABatch
from .builder import build_component
from .compile import (
    CompiledGraphLog,
    compile_layers,
    compile_settings,
    decoder_layers,
    mask_decoder,
    restore_eager,
)
from .fast_init import no_weight_init
from .feature_cache import FrozenEncoders, FrozenFeatureCache, build_feature_cache
from .losses import MaskLoss
from .mllm import MLLMAdapter
from .sam2_grounding import SAM2GroundingEncoder, SAM2ImageFeatures, upsample_logits

IGNORE_INDEX = -100
#: Where the LM head runs in the training loss (``Sa2VAModel(lm_logits=...)``).
LM_LOGITS_MODES = ("supervised", "all")
#: How :meth:`Sa2VAModel.logits_to_probs` brings the low-res mask logits to an image's size.
OUTPUT_RESOLUTIONS = ("low", "full")

# Part name -> parameter-name prefix inside Sa2VAModel. Every parameter belongs to exactly one part;
# `sam2_other` (memory attention/encoder, object pointers, no_mem_embed, ...) is what is left of SAM2.
PART_PREFIXES: dict[str, str] = {
    "vision_model": "mllm.vision_model.",
    "mlp1": "mllm.mlp1.",
    "llm": "mllm.language_model.",
    "sam2_image_encoder": "grounding_encoder.sam2_model.image_encoder.",
    "sam2_prompt_encoder": "grounding_encoder.sam2_model.sam_prompt_encoder.",
    "sam2_mask_decoder": "grounding_encoder.sam2_model.sam_mask_decoder.",
    "mask_upsampler": "grounding_encoder.upsampler.",  # optional (MaskUpsampler); before sam2_other
    "sam2_other": "grounding_encoder.",
    "text_hidden_fcs": "text_hidden_fcs.",
}
TRAIN_MODES = ("frozen", "full", "lora")
# The reference recipe.
DEFAULT_TRAINABLE: dict[str, str] = {
    "vision_model": "frozen",
    "mlp1": "full",
    "llm": "lora",
    "sam2_image_encoder": "frozen",
    "sam2_prompt_encoder": "frozen",
    "sam2_mask_decoder": "full",
    "mask_upsampler": "full",
    "sam2_other": "frozen",
    "text_hidden_fcs": "full",
}
# `keep_originals=False`: PEFT's frozen originals of the embedding / head copies are released (no numerical
# change; see MLLMAdapter.apply_lora).
DEFAULT_LORA: dict[str, Any] = {
    "r": 128,
    "alpha": 256,
    "dropout": 0.05,
    "train_embeddings": True,
    "keep_originals": False,
}
# Parts initialised even when `load_weights` is given (official folders have no place for them).
INITIALISED_WHEN_LOADING: tuple[str, ...] = (PART_PREFIXES["mask_upsampler"],)


def part_of(param_name: str) -> str:
    """The part (key of :data:`PART_PREFIXES`) that parameter ``param_name`` belongs to."""
    for part, prefix in PART_PREFIXES.items():
        if param_name.startswith(prefix):
            return part
    raise KeyError(f"parameter {param_name!r} belongs to no part of Sa2VAModel")


class Sa2VADataPreprocessor(BaseDataPreprocessor):
    """Moves a :class:`Sa2VABatch` to the model's device (non-blocking from pinned memory).

    Set by :class:`Sa2VAModel`: ``seg_token_idx`` / ``img_context_token_id`` / ``num_image_token``
    (count the ``[SEG]`` and ``<IMG_CONTEXT>`` tokens per sample on the host, check them against the
    masks and tiles and store the ``[SEG]`` counts in ``batch.seg_counts``, so the model needs no
    device-to-host sync) and ``keep_pixels_on_host`` (leave the image tensors on the host: with a
    frozen-feature cache only the samples that miss are copied to the device). Host labels also give
    ``batch.lm_positions`` (:func:`supervised_positions`), so the LM loss gathers without a sync.
    """

    seg_token_idx: int | None = None
    img_context_token_id: int | None = None
    num_image_token: int = 0
    vision_rows_per_output: int = 1
    keep_pixels_on_host: bool = False

    def forward(self, data: dict, training: bool = False) -> dict:
        batch = data["data"]
        if not isinstance(batch, Sa2VABatch):
            raise TypeError(f"expected a Sa2VABatch under 'data', got {type(batch).__name__}")
        host_ids = batch.input_ids.device.type == "cpu"
        if self.seg_token_idx is not None and batch.seg_counts is None and host_ids:
            counts = (batch.input_ids == self.seg_token_idx).sum(dim=1).tolist()
            check_seg_counts(batch, counts)
            slots = (batch.input_ids == self.img_context_token_id).sum(dim=1).tolist()
            per_out = self.vision_rows_per_output
            for i, (n, t) in enumerate(zip(slots, batch.num_tiles)):
                if t % per_out or n != t // per_out * self.num_image_token:
                    sid = batch.image_ids[i] if i < len(batch.image_ids) else i
                    raise ValueError(
                        f"sample {sid!r}: {n} image-slot tokens for {t} vision input rows "
                        f"({per_out} row(s) -> {self.num_image_token} token(s))"
                    )
            batch = replace(batch, seg_counts=counts)
        if batch.lm_positions is None and batch.labels.device.type == "cpu":
            batch = replace(batch, lm_positions=supervised_positions(batch.labels))
        keep = ("pixel_values", "g_pixel_values") if self.keep_pixels_on_host else ()
        moved = batch.to(self.device, non_blocking=True, keep_on_host=keep)
        return {"data": moved, "data_samples": data.get("data_samples")}


def resolve_init_device(init_device: str | torch.device | None) -> torch.device | None:
    """``init_device`` as a device; a CUDA one becomes the CPU (logged) when no GPU is visible."""
    if init_device is None:
        return None
    device = torch.device(init_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        MMLogger.get_current_instance().info(
            f"init_device={init_device!r}: no GPU visible, building on the CPU"
        )
        return torch.device("cpu")
    return device


def tensor_versions(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, int]:
    """Persistent tensors under ``prefixes`` (minus :data:`INITIALISED_WHEN_LOADING`) -> their version
    counter, which every in-place write (the loaders' ``copy_``) increments."""
    if not prefixes:
        return {}
    return {
        k: t._version
        for k, t in nn.Module.state_dict(model, keep_vars=True).items()
        if k.startswith(prefixes) and not k.startswith(INITIALISED_WHEN_LOADING)
    }


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat positions of the tokens whose NEXT token is labelled: the only logits the LM loss reads.

    Args:
        labels: ``[B, L]`` long, :data:`IGNORE_INDEX` where nothing is supervised.

    Returns:
        ``[N]`` long positions into ``[B * L]`` in row-major order: ``b * L + t`` for every
        ``labels[b, t + 1] != IGNORE_INDEX``; the target of position ``p`` is ``labels.flatten()[p + 1]``.
        On a device this reads ``N`` back (one sync); the data preprocessor computes it on the host.
    """
    nxt = labels[:, 1:] != IGNORE_INDEX
    is_sup = torch.cat([nxt, torch.zeros_like(nxt[:, :1])], dim=1)
    return is_sup.flatten().nonzero().squeeze(1)


def check_seg_counts(batch: Sa2VABatch, counts: list[int]) -> None:
    """Raise when a sample's number of ``[SEG]`` tokens differs from its number of masks."""
    for i, (c, m) in enumerate(zip(counts, batch.masks)):
        if c != m.shape[0]:
            sid = batch.image_ids[i] if i < len(batch.image_ids) else i
            raise ValueError(
                f"sample {sid!r}: {c} {SEG_TOKEN} tokens in the sequence but {m.shape[0]} masks "
                "(was the text truncated?)"
            )


class Sa2VAModel(BaseModel):
    """Sa2VA: InternVL MLLM + SAM2, trained through the teacher-forced forward.

    Args:
        mllm: an MLLM adapter (:class:`~.mllm.MLLMAdapter`, or its config dict), e.g. ``Qwen2InternVL``
            or ``Qwen3VLSa2VA``.
        grounding_encoder: a :class:`SAM2GroundingEncoder` (or its config dict).
        loss_mask: a :class:`MaskLoss` (or its config dict): BCE + Dice weights, resolution mode.
        trainable: part -> ``'frozen' | 'full' | 'lora'`` (``'lora'`` only for ``llm``); missing
            parts take :data:`DEFAULT_TRAINABLE` (the reference recipe).
        lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``train_embeddings``, ``keep_originals``,
            ``fast_trainable_tokens``; see
            :meth:`~.mllm.MLLMAdapter.apply_lora`) used when ``trainable['llm'] == 'lora'``; missing keys
            take :data:`DEFAULT_LORA`. ``train_embeddings``: ``True`` (full embedding / head copies, the
            official recipe), ``'new_tokens'`` (only the rows of Sa2VA's added tokens; less memory, not the
            official numerics) or ``False``.
        lm_loss_weight: weight of the next-token cross-entropy.
        lm_logits: where the training loss runs the LM head: ``'supervised'`` (default) only at the
            positions whose next token is labelled (:func:`supervised_positions`; a few answer tokens
            per sample instead of every position, so the ``[B, L, V]`` logits are never built);
            ``'all'`` at every position, then the loss over the labelled ones (the plain path). Both give
            the same loss (token mean over the batch) and gradients up to float rounding
            (``tests/models/test_supervised_logits.py``). ``forward_tensors`` / ``predict`` always
            compute the logits at every position.
        seg_hidden_shift: 0 takes the hidden state AT each ``[SEG]`` position (Sa2VA); -1 the one
            before it (LISA).
        output_resolution: how predictions bring the low-res mask logits to an image's size
            (:meth:`logits_to_probs`): ``'low'`` through the SAM2 input size first (the official
            inference), ``'full'`` straight to the image size. ``None`` (default): the mask loss's
            ``resolution``, i.e. the way the logits were trained.
        feature_cache: frozen-feature cache settings (``dict(mode='memory' | 'disk' | 'off', dir=...,
            max_bytes=..., dtype=...)``, see :mod:`.feature_cache`); ``None`` = off. Needs the ViT and
            the SAM2 image encoder frozen. The leaf config decides (on when augmentation is off).
        load_weights: a callable ``(model) -> None`` that loads base weights (e.g. an official HF
            folder) after the parts are built and before LoRA is applied.
        skip_init: build the parts given as config dicts without running any weight initialiser
            (:func:`~.fast_init.no_weight_init`); ``load_weights`` must then write every tensor (except
            :data:`INITIALISED_WHEN_LOADING`), which is checked. ``None`` (default): on when
            ``load_weights`` is given.
        init_device: device the parts are built (initialised, loaded) on, e.g. ``'cuda'``: random init
            and loading run there instead of on the host, and the Runner's later ``model.to(device)``
            has nothing left to move. ``'cuda'`` falls back to the CPU (with a log line) when no GPU is
            visible, so one config serves both. mmengine sets each rank's current GPU before it builds
            the model, so ``'cuda'`` is that rank's GPU. ``None`` (default): the current default device.
        compile_llm: regional ``torch.compile`` of the LLM's decoder layers (:mod:`.compile`), opt-in:
            ``False`` (default, eager), ``True`` (automatic dynamic shapes: variable padded lengths cost
            a few compiled graphs, not one per length) or a dict of
            :class:`~.compile.LLMCompileSettings` fields (``dynamic``, ``backend``, ``mode``,
            ``recompile_limit``). Applied once, after LoRA (the PEFT wrappers are inside the compiled
            region), in place through ``nn.Module.compile``: ``state_dict`` keys are unchanged. The layers
            run compiled in training mode only; :meth:`train` ``(False)`` / ``eval()`` restores the eager
            layers (validation, prediction, generation) and ``train()`` compiles them again (dynamo keeps
            the graphs). Each time dynamo has compiled another graph it is logged. Works with the
            adapter's ``gradient_checkpointing``, all layers or some (:mod:`.checkpointing`): the
            checkpointed compiled layers are recomputed in backward.
        compile_decoder: the same for the SAM2 mask decoder
            (``grounding_encoder.sam2_model.sam_mask_decoder``, one compiled region run on the ``N``
            objects of a step; :mod:`.compile`), opt-in, with the same values and the same
            training-mode-only rule; independent of ``compile_llm``.
        data_preprocessor: defaults to :class:`Sa2VADataPreprocessor`.
    """

    def __init__(
        self,
        *,
        mllm: MLLMAdapter | dict,
        grounding_encoder: SAM2GroundingEncoder | dict,
        loss_mask: MaskLoss | dict | None = None,
        trainable: dict[str, str] | None = None,
        lora: dict[str, Any] | None = None,
        lm_loss_weight: float = 1.0,
        lm_logits: str = "supervised",
        seg_hidden_shift: int = 0,
        output_resolution: str | None = None,
        load_weights: Any = None,
        skip_init: bool | None = None,
        init_device: str | torch.device | None = None,
        feature_cache: FrozenFeatureCache | dict | None = None,
        compile_llm: bool | dict[str, Any] = False,
        compile_decoder: bool | dict[str, Any] = False,
        data_preprocessor: dict | nn.Module | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor or Sa2VADataPreprocessor())
        if skip_init is None:
            skip_init = load_weights is not None
        elif skip_init and load_weights is None:
            raise ValueError("skip_init=True needs load_weights: nothing would initialise the weights")
        unknown = set(trainable or {}) - set(PART_PREFIXES)
        if unknown:
            raise ValueError(
                f"unknown parts in `trainable`: {sorted(unknown)} (known: {list(PART_PREFIXES)})"
            )
        if seg_hidden_shift not in (0, -1):
            raise ValueError(f"seg_hidden_shift must be 0 or -1, got {seg_hidden_shift}")
        self.seg_hidden_shift = seg_hidden_shift
        if lm_logits not in LM_LOGITS_MODES:
            raise ValueError(f"lm_logits must be one of {LM_LOGITS_MODES}, got {lm_logits!r}")
        self.lm_logits = lm_logits
        self.lm_loss_weight = lm_loss_weight
        self.trainable = {**DEFAULT_TRAINABLE, **(trainable or {})}
        self.lora_cfg = {**DEFAULT_LORA, **(lora or {})}
        self.loss_mask: MaskLoss = build_component(loss_mask) if loss_mask is not None else MaskLoss()
        if output_resolution is None:
            output_resolution = self.loss_mask.resolution
        if output_resolution not in OUTPUT_RESOLUTIONS:
            raise ValueError(
                f"output_resolution must be one of {OUTPUT_RESOLUTIONS}, got {output_resolution!r}"
            )
        self.output_resolution = output_resolution

        device = resolve_init_device(init_device)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            with no_weight_init(skip_init):
                self.mllm: MLLMAdapter = build_component(mllm)
                self.grounding_encoder: SAM2GroundingEncoder = build_component(grounding_encoder)
                hidden = self.mllm.hidden_size
                self.text_hidden_fcs = nn.Sequential(
                    nn.Linear(hidden, hidden),
                    nn.ReLU(inplace=True),
                    nn.Linear(hidden, self.grounding_encoder.hidden_dim),
                    nn.Dropout(0.0),
                )
            self.tokenizer = self.mllm.tokenizer
            self.seg_token_idx = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
            if self.seg_token_idx is None or self.seg_token_idx == self.tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no {SEG_TOKEN} token")
            # Parts passed in as modules were initialised by whoever built them.
            uninitialised = ["text_hidden_fcs."] if skip_init else []
            uninitialised += [
                f"{n}."
                for n, c in (("mllm", mllm), ("grounding_encoder", grounding_encoder))
                if skip_init and isinstance(c, dict)
            ]
            self._load_base_weights(load_weights, tuple(uninitialised))
            self.mllm.resize_token_embeddings()
            self._apply_trainability()
        self.feature_cache = build_feature_cache(feature_cache)
        if self.feature_cache is not None:
            for part in ("vision_model", "sam2_image_encoder"):
                if not self.part_is_frozen(part):
                    raise ValueError(
                        f"feature_cache needs a frozen {part}, but trainable[{part!r}] is "
                        f"{self.trainable[part]!r}"
                    )
        if isinstance(self.data_preprocessor, Sa2VADataPreprocessor):
            self.data_preprocessor.seg_token_idx = self.seg_token_idx
            self.data_preprocessor.img_context_token_id = self.mllm.img_context_token_id
            self.data_preprocessor.num_image_token = self.mllm.num_image_token
            self.data_preprocessor.vision_rows_per_output = self.mllm.vision_rows_per_output
            self.data_preprocessor.keep_pixels_on_host = self.feature_cache is not None
        self.llm_compile = compile_settings(compile_llm, "compile_llm")
        self.decoder_compile = compile_settings(compile_decoder, "compile_decoder")
        self._compiled_graphs: CompiledGraphLog | None = None
        if self.llm_compile is not None or self.decoder_compile is not None:
            self._compiled_graphs = CompiledGraphLog("compile_llm" if self.llm_compile else "compile_decoder")
            self.train(self.training)  # compiles in training mode (the default), not in eval mode
        logger = MMLogger.get_current_instance()
        if self.llm_compile is not None:
            n = len(decoder_layers(self.mllm.base_llm()))
            logger.info(
                f"compile_llm: {n} decoder layers compiled in place ({self.llm_compile}; training mode only)"
            )
        if self.decoder_compile is not None:
            logger.info(
                f"compile_decoder: the SAM2 mask decoder compiled in place ({self.decoder_compile}; training "
                "mode only)"
            )
        self.log_trainable()

    # --- building ----------------------------------------------------------------------------------
    def _load_base_weights(self, load_weights: Any, uninitialised: tuple[str, ...]) -> None:
        """Run ``load_weights``; every tensor under an ``uninitialised`` prefix must be written by it."""
        before = tensor_versions(self, uninitialised)
        if load_weights is not None:
            build_component(load_weights)(self) if isinstance(load_weights, dict) else load_weights(self)
        after = tensor_versions(self, uninitialised)
        unwritten = [k for k, v in after.items() if v == before[k]]
        if unwritten:
            raise RuntimeError(
                f"{len(unwritten)} tensor(s) were built without initialisation (skip_init; load_weights="
                f"{load_weights!r}) but the loader did not write them: {unwritten[:10]}; load them, or "
                "build with skip_init=False to keep their random initialisation"
            )

    def train(self, mode: bool = True) -> Sa2VAModel:
        """``nn.Module.train``; with ``compile_llm`` / ``compile_decoder`` also compiles (``mode=True``) or
        restores the eager (``mode=False``) decoder layers / mask decoder."""
        super().train(mode)
        regions = (
            (getattr(self, "llm_compile", None), lambda: decoder_layers(self.mllm.base_llm())),
            (getattr(self, "decoder_compile", None), lambda: [mask_decoder(self)]),
        )  # the settings are None while __init__ runs
        for settings, modules in regions:
            if settings is None:
                continue
            if mode:
                compile_layers(modules(), settings)
            else:
                restore_eager(modules())
        return self

    # --- trainability -----------------------------------------------------------------------------
    def _apply_trainability(self) -> None:
        for part, mode in self.trainable.items():
            if mode not in TRAIN_MODES:
                raise ValueError(f"trainable[{part!r}] = {mode!r}; expected one of {TRAIN_MODES}")
            if mode == "lora" and part != "llm":
                raise ValueError(f"trainable[{part!r}] = 'lora': LoRA is only available for 'llm'")
        self.requires_grad_(False)
        if self.trainable["llm"] == "lora":
            # PEFT marks LoRA and the embedding / head copies (or their new-token rows) trainable.
            self.mllm.apply_lora(**self.lora_cfg)
        for name, param in self.named_parameters():
            if self.trainable[part_of(name)] == "full":
                param.requires_grad_(True)
        # Trainable tensors are fp32 master weights (bf16 updates of ~lr*1e-3 would round away);
        # frozen ones keep the dtype they were built/loaded in (bf16 on GPU to save memory).
        for param in self.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()

    def part_is_frozen(self, part: str) -> bool:
        return self.trainable[part] == "frozen"

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """Part -> (trainable parameters, all parameters)."""
        counts: dict[str, list[int]] = {p: [0, 0] for p in PART_PREFIXES}
        for name, param in self.named_parameters():
            c = counts[part_of(name)]
            c[1] += param.numel()
            if param.requires_grad:
                c[0] += param.numel()
        return {k: (v[0], v[1]) for k, v in counts.items()}

    def log_trainable(self) -> None:
        logger = MMLogger.get_current_instance()
        counts = self.parameter_counts()
        lines = [f"{'part':<22}{'mode':<8}{'trainable':>16}{'total':>16}"]
        for part, (tr, tot) in counts.items():
            lines.append(f"{part:<22}{self.trainable[part]:<8}{tr:>16,}{tot:>16,}")
        tr_all = sum(v[0] for v in counts.values())
        tot_all = sum(v[1] for v in counts.values())
        lines.append(f"{'total':<30}{tr_all:>16,}{tot_all:>16,}")
        logger.info("Sa2VAModel parameters:\n" + "\n".join(lines))

    # --- checkpoints of trainable tensors only ----------------------------------------------------
    def trainable_keys(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Only the trainable tensors (LoRA, embedding / head copies or rows, ``mlp1``, mask decoder, fcs)."""
        full = super().state_dict(*args, **kwargs)
        keep = set(self.trainable_keys())
        prefix = kwargs.get("prefix", "")
        # Filter in place: a wrapper (DDP) passes its own `destination` dict down.
        for k in [k for k in full if k.startswith(prefix) and k[len(prefix) :] not in keep]:
            del full[k]
        return full

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load trainable tensors; with ``strict`` any missing or unexpected key is an error."""
        keep = set(self.trainable_keys())
        got = set(state_dict)
        missing, unexpected = sorted(keep - got), sorted(got - keep)
        if strict and (missing or unexpected):
            raise KeyError(
                f"trainable checkpoint does not match the model: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # --- forward -----------------------------------------------------------------------------------
    def _maybe_no_grad(self, part: str) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.part_is_frozen(part) else contextlib.nullcontext()

    def encode_images(self, batch: Sa2VABatch) -> tuple[torch.Tensor | None, SAM2ImageFeatures]:
        """The frozen encoders (or their cached outputs): ViT tokens and SAM2 image features."""
        device = self.text_hidden_fcs[0].weight.device
        if self.feature_cache is not None and batch.vit_tokens is None and batch.sam2_fpn is None:
            vit_tokens, fpn = self.feature_cache.encode(batch, self.frozen_encoders(), device)
            return vit_tokens, SAM2ImageFeatures(fpn)
        vit_tokens = batch.vit_tokens
        if vit_tokens is None and batch.pixel_values is not None:
            grid = {} if batch.image_grid_thw is None else {"image_grid_thw": batch.image_grid_thw}
            with self._maybe_no_grad("vision_model"):
                vit_tokens = self.mllm.encode_vit(batch.pixel_values.to(device, non_blocking=True), **grid)
        if batch.sam2_fpn is not None:
            feats = SAM2ImageFeatures(list(batch.sam2_fpn))
        else:
            if batch.g_pixel_values is None:
                raise ValueError("batch has neither g_pixel_values nor cached sam2_fpn")
            with self._maybe_no_grad("sam2_image_encoder"):
                g_pix = batch.g_pixel_values.to(device, non_blocking=True)
                feats = self.grounding_encoder.encode_image(g_pix)
        return vit_tokens, feats

    def frozen_encoders(self) -> FrozenEncoders:
        """The ViT and the SAM2 image encoder as the frozen-feature cache calls them (see
        :class:`~.feature_cache.FrozenEncoders`); their modules are found through :data:`PART_PREFIXES`."""

        def vit(pixels: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
            return self.mllm.encode_vit(pixels, **({} if grid is None else {"image_grid_thw": grid}))

        return FrozenEncoders(
            vit=vit,
            vit_rows_per_output=self.mllm.vision_rows_per_output,
            vit_weights=self.get_submodule(PART_PREFIXES["vision_model"].rstrip(".")),
            sam2=lambda g_pixels: self.grounding_encoder.encode_image(g_pixels).fpn,
            sam2_weights=self.get_submodule(PART_PREFIXES["sam2_image_encoder"].rstrip(".")),
        )

    def seg_positions(
        self, input_ids: torch.Tensor, counts: list[int] | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """Flat positions (into ``[B * L]``) of the tokens whose hidden state becomes a mask prompt.

        Args:
            input_ids: ``[B, L]``.
            counts: ``[B]`` number of ``[SEG]`` tokens per sample when already known on the host
                (``batch.seg_counts``): then no device-to-host sync happens here. Otherwise they are
                counted on the device and read back (one sync).

        Returns:
            ``([N] long positions in row-major order, [B] counts)``; ``position // L`` is the sample.
        """
        is_seg = input_ids == self.seg_token_idx
        if self.seg_hidden_shift == -1:
            is_seg = torch.cat([is_seg[:, 1:], torch.zeros_like(is_seg[:, :1])], dim=1)
        if counts is None:
            counts = is_seg.sum(dim=1).tolist()
        # A static size N and no sync: a stable descending sort of the 0/1 flags puts the N ones
        # first, in their original (row-major) order.
        pos = torch.argsort(is_seg.flatten().to(torch.int8), descending=True, stable=True)
        return pos[: sum(counts)], counts

    def seg_embeddings(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, counts: list[int] | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """Hidden states at the ``[SEG]`` positions, projected to the SAM2 prompt size.

        Args:
            input_ids: ``[B, L]``.
            hidden: ``[B, L, H]`` last-layer hidden states (after the final norm).
            counts: see :meth:`seg_positions`.

        Returns:
            ``([N, hidden_dim] language embeddings in row-major order of the [SEG] tokens,
            [B] number of [SEG] tokens per sample)``.
        """
        pos, counts = self.seg_positions(input_ids, counts)
        return self.text_hidden_fcs(hidden.flatten(0, 1).index_select(0, pos)), counts

    def forward(self, data: Sa2VABatch, data_samples: Any = None, mode: str = "loss") -> Any:
        """mmengine's entry point: ``model(**data_preprocessor(data), mode=...)``.

        Args:
            data: a :class:`Sa2VABatch` of ``B`` samples on the model's device: ``input_ids`` /
                ``attention_mask`` / ``labels`` ``[B, L]``, ``pixel_values`` ``[T, 3, S, S]`` tiles (or
                Qwen-VL ``[P, D]`` patches), ``g_pixel_values`` ``[B, 3, G, G]``, ``masks`` per sample
                ``[n_i, H_i, W_i]`` (one per ``[SEG]`` token).
            data_samples: unused (mmengine passes it along).
            mode: ``'loss'``: :meth:`compute_loss`, a dict of scalar losses (``loss_lm``, the mask
                loss's terms); ``'predict'``: :meth:`predict`, per sample ``probs [n_i, H_i, W_i]``
                float32 in [0, 1] and ``gt [n_i, H_i, W_i]`` bool; ``'tensor'``: :meth:`forward_tensors`,
                the raw outputs (``logits [B, L, V]``, ``mask_logits [N, h, w]`` with ``N = sum n_i``).

        Raises:
            ValueError: an unknown ``mode``.
        """
        if mode == "loss":
            return self.compute_loss(data)
        if mode == "predict":
            return self.predict(data)
        if mode == "tensor":
            return self.forward_tensors(data)
        raise ValueError(f"unknown mode {mode!r} (expected 'loss', 'predict' or 'tensor')")

    def forward_tensors(self, batch: Sa2VABatch, *, logits: bool = True) -> dict[str, Any]:
        """Run everything; return raw outputs.

        Args:
            batch: the batch (on the model's device).
            logits: apply the LM head at every position (``False``: ``logits`` is ``None``; the
                training loss applies the head at the supervised positions of ``lm_hidden`` only).

        Returns:
            dict with ``logits [B, L, V]`` (or ``None``), ``lm_hidden [B, L, H]`` (the head's input),
            ``hidden [B, L, H]`` (the ``[SEG]`` hidden states), ``seg_embeds [N, hidden_dim]``,
            ``seg_counts [B]``, ``mask_logits [N, h, w]`` (SAM2 low-res logits; ``N`` may be 0),
            ``features`` (the SAM2 image features).
        """
        vit_tokens, feats = self.encode_images(batch)
        lm_hidden, hidden = self.mllm.decode(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            vit_tokens=vit_tokens,
            image_slots_checked=batch.seg_counts is not None,  # set after the host-side checks
            image_grid_thw=batch.image_grid_thw,
        )
        pos, counts = self.seg_positions(batch.input_ids, batch.seg_counts)
        seg_embeds = self.text_hidden_fcs(hidden.flatten(0, 1).index_select(0, pos))
        obj_to_img = torch.div(pos, hidden.shape[1], rounding_mode="floor")
        if seg_embeds.shape[0] > 0:
            mask_logits = self.grounding_encoder.decode_masks(
                feats, seg_embeds, obj_to_img, images=batch.g_pixel_values
            )["masks"]
        else:
            mask_logits = hidden.new_zeros(
                (0, self.grounding_encoder.low_res_size, self.grounding_encoder.low_res_size)
            )
        if self._compiled_graphs is not None and self.training:  # after both compiled regions ran
            self._compiled_graphs.update(tuple(batch.input_ids.shape))
        return {
            "logits": self.mllm.head_logits(lm_hidden) if logits else None,
            "lm_hidden": lm_hidden,
            "hidden": hidden,
            "seg_embeds": seg_embeds,
            "seg_counts": counts,
            "mask_logits": mask_logits,
            "features": feats,
        }

    def lm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the labelled positions (mean over tokens) from full logits.

        Args:
            logits: ``[B, L, V]`` (any float dtype; the loss is computed in float32).
            labels: ``[B, L]`` long, :data:`IGNORE_INDEX` where unsupervised.

        Returns:
            scalar: the sum of the token losses / the number of labelled tokens of the batch (0, with
            the graph kept, when nothing is labelled).
        """
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        # sum / max(count, 1) instead of a data-dependent branch: no device-to-host sync, and 0 (with
        # the graph kept) when nothing is labelled.
        total = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)

    def lm_loss_supervised(
        self, lm_hidden: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`lm_loss` with the LM head applied only where its logits enter the loss.

        Args:
            lm_hidden: ``[B, L, H]`` the head's input (``forward_tensors(...)['lm_hidden']``).
            labels: ``[B, L]`` long, :data:`IGNORE_INDEX` where unsupervised.
            positions: ``[N]`` :func:`supervised_positions` of ``labels`` (``batch.lm_positions``);
                computed here (one device sync) when ``None``.

        Returns:
            scalar: the same token mean as :meth:`lm_loss` (0, with the graph kept, when ``N = 0``).
        """
        if positions is None:
            positions = supervised_positions(labels)
        positions = positions.to(lm_hidden.device)
        logits = self.mllm.head_logits(lm_hidden.flatten(0, 1).index_select(0, positions)).float()
        targets = labels.flatten().index_select(0, positions + 1)
        total = F.cross_entropy(logits, targets, reduction="sum")
        return total / max(positions.shape[0], 1)

    def compute_loss(self, batch: Sa2VABatch) -> dict[str, torch.Tensor]:
        """LM loss + mask losses; a batch without any ``[SEG]`` keeps the mask path at weight 0."""
        full = self.lm_logits == "all"
        out = self.forward_tensors(batch, logits=full)
        if full:
            loss_lm = self.lm_loss(out["logits"], batch.labels)
        else:
            loss_lm = self.lm_loss_supervised(out["lm_hidden"], batch.labels, batch.lm_positions)
        losses = {"loss_lm": self.lm_loss_weight * loss_lm}
        counts = out["seg_counts"]
        check_seg_counts(batch, counts)
        if sum(counts) > 0:
            losses.update(self.loss_mask(out["mask_logits"], batch.masks, counts))
        else:
            # DDP needs every trainable parameter in the graph: run the mask path on a dummy prompt.
            dummy = self.text_hidden_fcs(out["hidden"][:, 0])
            idx = torch.arange(batch.batch_size, device=dummy.device)
            logits = self.grounding_encoder.decode_masks(
                out["features"], dummy, idx, images=batch.g_pixel_values
            )["masks"]
            zero = logits.sum() * 0.0
            losses.update(dict.fromkeys(self.loss_mask.loss_names, zero))
        return losses

    @torch.no_grad()
    def predict(self, batch: Sa2VABatch) -> list[dict[str, Any]]:
        """Teacher-forced prediction (the [SEG] answers are in the input): per-sample probability maps.

        Returns:
            per sample: ``image_id``, ``texts``, ``probs`` ``[n, H, W]`` float32 in [0, 1] at the
            ground-truth size (logits upsampled bilinearly via the SAM2 input size, as the official
            inference does), ``gt`` ``[n, H, W]`` bool.
        """
        out = self.forward_tensors(batch)
        results = []
        for i, (lg, gt) in enumerate(zip(out["mask_logits"].split(out["seg_counts"]), batch.masks)):
            size = tuple(gt.shape[-2:])
            probs = self.logits_to_probs(lg, size)
            results.append(
                {
                    "image_id": batch.image_ids[i] if batch.image_ids else str(i),
                    "texts": batch.texts[i] if batch.texts else [],
                    "probs": probs.cpu(),
                    "gt": gt.bool().cpu(),
                }
            )
        return results

    def logits_to_probs(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``[n, h, w]`` -> probabilities ``[n, *size]``.

        With ``output_resolution='full'`` the logits are upsampled directly to ``size``; with ``'low'``
        through the SAM2 input size first, like the official inference (bilinear both times).
        """
        if self.output_resolution == "low":
            s = self.grounding_encoder.image_size
            logits = upsample_logits(logits, (s, s))
        return upsample_logits(logits, size).sigmoid()
