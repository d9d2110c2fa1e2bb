"""Training-throughput benchmark of Sa2VA at real shapes (random weights) on one device.

For each model shape the model is built once (through :class:`Sa2VAModel`, the classes the configs
use) and trained under each run configuration in turn, so the configurations are compared side by
side in one process:

* throughput pass: ``warmup`` steps (which also fill the feature cache), then ``steps`` timed steps
  with only two device events around them (no sync inside the timed loop);
* profiling pass: ``profile_steps`` steps run stage by stage with a device synchronisation around
  each stage: ViT, SAM2 image encoder, LLM forward+backward, mask decoder forward+backward,
  optimiser. The backward is split exactly: the decoder is run on a detached copy of the ``[SEG]``
  embeddings, its backward gives their gradient, which is then fed into the LLM's backward;
* one extra step under ``torch.cuda.set_sync_debug_mode('warn')`` counts host-device syncs.

Batches are real samples of the bundled data (``data/chase_db1``, 512x512 images) preprocessed by
:class:`RefSegDataset` with the tiny offline tokenizer of the family, 5 masks per sample. InternVL shapes
(``1b``, ``4b``, ``tiny``): one InternViT tile per image, the 1024 SAM2 input, ~380 tokens per sample.
Qwen3-VL shapes (``qwen3vl4b``, ``tinyqwen3vl``): the model config's own Qwen-VL image processor (patches +
``image_grid_thw``; ``<|vision_start|>`` + ``<|image_pad|>`` x n + ``<|vision_end|>`` in the text; at
Sa2VA's pixel budget a 512x512 image is resized to 640x640: 400 image tokens). They are collated (with
cache digests) and pinned before timing: data loading and hashing happen in DataLoader workers in real
training and are not timed here.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import MMLogger

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.image_processing import InternVLImageProcessor
from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.datasets.refseg import RefSegDataset
from projects.sa2va.models.builder import build_component
from projects.sa2va.models.compile import compiled_decoder_layers, compiled_mask_decoder, dynamo_graphs
from projects.sa2va.models.feature_cache import build_feature_cache
from projects.sa2va.models.internvl import Qwen2InternVL
from projects.sa2va.models.losses import MaskLoss
from projects.sa2va.models.mllm import MLLMAdapter
from projects.sa2va.models.qwenvl import Qwen3VLSa2VA
from projects.sa2va.models.qwenvl_tokenizer import build_tiny_qwenvl_tokenizer
from projects.sa2va.models.sa2va import DEFAULT_LORA, Sa2VAModel
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from projects.sa2va.models.tokenizer import build_tiny_tokenizer

from .flops import (
    SampleFlops,
    counted_flops,
    deepstack_flops,
    llm_forward_flops,
    mlp1_forward_flops,
    qwen3vl_vision_forward_flops,
    vit_forward_flops,
)
from .presets import BENCH_VOCAB_SIZE, PRESET_CONFIGS, load_preset


@dataclass(frozen=True)
class ModelShape:
    """The shapes of one benchmark model (read from its ``_base_`` config by :func:`model_shape`).

    Attributes:
        vision_config / llm_config: InternViT + Qwen2 configs, or Qwen3-VL's ``vision_config`` /
            ``text_config``.
        vit_image_size: InternViT tile size (px); ``None`` for Qwen-VL (the processor's pixel budget).
        mllm_type: the adapter class of the config's ``model.mllm``; it picks the :class:`BenchFamily`.
        trainable: the config's ``model.trainable`` (``None``: the model's defaults).
        image_processor: the config's image processor dict (used by the Qwen-VL family).
    """

    name: str
    vision_config: dict
    llm_config: dict
    sam2_overrides: dict | None
    vit_image_size: int | None
    sam2_image_size: int
    lora_r: int = 128
    mllm_type: type = Qwen2InternVL
    trainable: dict | None = None
    image_processor: dict | None = None

    @property
    def family(self) -> type[BenchFamily]:
        """The :class:`BenchFamily` of :attr:`mllm_type` (``ValueError`` if the harness has none)."""
        family = BENCH_FAMILIES.get(self.mllm_type)
        if family is None:
            raise ValueError(
                f"model shape {self.name!r}: the benchmark has no family for {self.mllm_type.__name__} "
                f"(known: {[t.__name__ for t in BENCH_FAMILIES]})"
            )
        return family


#: Shapes whose LM takes :data:`BENCH_VOCAB_SIZE` over the config's vocabulary (their published figures).
BENCH_VOCAB_SHAPES = ("1b", "4b")


def model_shape(name: str) -> ModelShape:
    """A shape of :data:`~.presets.PRESET_CONFIGS`: ``'1b'`` (InternViT-300M + Qwen2.5-0.5B + SAM2
    Hiera-L), ``'4b'`` (+ Qwen2.5-3B), ``'tiny'``, ``'qwen3vl4b'`` (Qwen3-VL-4B vision tower and text
    decoder + SAM2 Hiera-L), ``'tinyqwen3vl'``.

    Shapes are read from the ``_base_`` model configs (:func:`load_preset`); 1b / 4b use
    :data:`BENCH_VOCAB_SIZE`, the others the config's vocabulary (Qwen3-VL-4B: 151936, as
    ``sa2va_qwen3vl_4b_random.py`` trains it).
    """
    if name not in PRESET_CONFIGS:
        raise ValueError(f"unknown model shape {name!r} (expected one of {list(PRESET_CONFIGS)})")
    p = load_preset(name)
    llm = p["llm_config"]
    if name in BENCH_VOCAB_SHAPES:
        llm = {**llm, "vocab_size": BENCH_VOCAB_SIZE}
    shape = ModelShape(
        name,
        p["vision_config"],
        llm,
        p["sam2_overrides"],
        p["vit_image_size"],
        p["sam2_image_size"],
        lora_r=p["lora_r"],
        mllm_type=p["mllm_type"],
        trainable=p["trainable"],
        image_processor=p["image_processor"],
    )
    shape.family  # noqa: B018 (refuses a family the harness does not know, at once)
    return shape


# --- families --------------------------------------------------------------------------------------
class BenchFamily:
    """What the benchmark does per MLLM family: build the adapter, preprocess images, count the FLOPs of
    the vision tower and of the image-token path into the LLM. One subclass per adapter class
    (:data:`BENCH_FAMILIES`)."""

    @staticmethod
    def build_mllm(shape: ModelShape, dtype: str | None) -> MLLMAdapter:
        raise NotImplementedError

    @staticmethod
    def image_processor(shape: ModelShape) -> Any:
        """The image processor the family's samples are built with."""
        raise NotImplementedError

    @staticmethod
    def checkpointed_lm(model: Sa2VAModel) -> Any:
        """The transformers model whose ``gradient_checkpointing_enable`` recomputes the decoder layers."""
        return model.mllm.base_llm()

    @staticmethod
    def vision_forward_flops(shape: ModelShape, batch: Any) -> float:
        """Forward FLOPs of the frozen vision tower per sample of the collated ``batch``."""
        raise NotImplementedError

    @staticmethod
    def image_path_forward_flops(shape: ModelShape, model: Sa2VAModel, batch: Any) -> float:
        """Forward FLOPs per sample of the trained path from the vision tokens into the LLM (beyond the
        decoder itself, whose image tokens are counted as sequence positions)."""
        raise NotImplementedError


class InternVLBench(BenchFamily):
    """InternViT + ``mlp1`` + Qwen2 (:class:`Qwen2InternVL`): one tile per 512x512 image."""

    @staticmethod
    def build_mllm(shape: ModelShape, dtype: str | None) -> MLLMAdapter:
        return Qwen2InternVL(
            tokenizer=build_tiny_tokenizer(),
            vision_config=dict(shape.vision_config),
            llm_config=dict(shape.llm_config),
            torch_dtype=dtype,
        )

    @staticmethod
    def image_processor(shape: ModelShape) -> Any:
        # one 448 tile + no thumbnail: what InternVL's tiling gives a 512x512 image
        return InternVLImageProcessor(
            tile_size=shape.vit_image_size,
            max_tiles=1,
            num_image_token=(shape.vit_image_size // 14) ** 2 // 4,
        )

    @staticmethod
    def vision_forward_flops(shape: ModelShape, batch: Any) -> float:
        tiles = sum(batch.num_tiles) / batch.batch_size
        return vit_forward_flops({**shape.vision_config, "image_size": shape.vit_image_size}, 1) * tiles

    @staticmethod
    def image_path_forward_flops(shape: ModelShape, model: Sa2VAModel, batch: Any) -> float:
        tiles = sum(batch.num_tiles) / batch.batch_size
        tokens = int(tiles * model.mllm.num_image_token)
        return mlp1_forward_flops(shape.vision_config["hidden_size"], shape.llm_config["hidden_size"], tokens)


class Qwen3VLBench(BenchFamily):
    """Qwen3-VL vision tower (mergers and DeepStack mergers) + Qwen3 text decoder (:class:`Qwen3VLSa2VA`),
    with the config's Qwen-VL image processor; no projector: the DeepStack features are added to the
    hidden states at the image positions after the first decoder layers."""

    @staticmethod
    def build_mllm(shape: ModelShape, dtype: str | None) -> MLLMAdapter:
        config = dict(text_config=dict(shape.llm_config), vision_config=dict(shape.vision_config))
        return Qwen3VLSa2VA(tokenizer=build_tiny_qwenvl_tokenizer(), config=config, torch_dtype=dtype)

    @staticmethod
    def checkpointed_lm(model: Sa2VAModel) -> Any:
        # the text decoder inside QwenVLCausalLM (the wrapper itself does not take gradient checkpointing)
        return model.mllm.base_llm().model

    @staticmethod
    def image_processor(shape: ModelShape) -> Any:
        if not shape.image_processor:
            raise ValueError(f"model shape {shape.name!r}: a Qwen-VL shape needs an image processor dict")
        return build_component(dict(shape.image_processor))

    @staticmethod
    def vision_forward_flops(shape: ModelShape, batch: Any) -> float:
        grids = [tuple(int(v) for v in g) for g in batch.image_grid_thw.tolist()]
        return qwen3vl_vision_forward_flops(shape.vision_config, grids) / batch.batch_size

    @staticmethod
    def image_path_forward_flops(shape: ModelShape, model: Sa2VAModel, batch: Any) -> float:
        tokens = float((batch.input_ids == model.mllm.img_context_token_id).sum()) / batch.batch_size
        levels = len(shape.vision_config.get("deepstack_visual_indexes") or [])
        return deepstack_flops(shape.llm_config["hidden_size"], tokens, levels)


#: Adapter class (the config's ``model.mllm.type``) -> its benchmark family.
BENCH_FAMILIES: dict[type, type[BenchFamily]] = {Qwen2InternVL: InternVLBench, Qwen3VLSa2VA: Qwen3VLBench}


@dataclass(frozen=True)
class RunConfig:
    """One training configuration compared in the table.

    Attributes:
        name: label in the table.
        batch_size: samples per step.
        cache: feature-cache mode (``'off'``, ``'memory'``, ``'disk'``).
        fused_adamw: ``torch.optim.AdamW(fused=True)`` (CUDA) instead of the default foreach one.
        compile_llm: regional ``torch.compile`` of the LLM: each decoder layer's forward is compiled
            (:func:`projects.sa2va.models.compile.compiled_decoder_layers`, the code of
            ``Sa2VAModel(compile_llm=...)``; the layers share one compiled graph per input shape).
        compile_decoder: the SAM2 mask decoder compiled the same way
            (:func:`projects.sa2va.models.compile.compiled_mask_decoder`, the code of
            ``Sa2VAModel(compile_decoder=...)``).
        gradient_checkpointing: recompute LLM activations in backward: ``True``, every decoder layer
            (transformers' ``gradient_checkpointing_enable``; the ``ckpt`` rows); an ``int`` ``N``, the first
            ``N`` decoder layers (the adapter's per-layer policy, :mod:`projects.sa2va.models.checkpointing`;
            the ``optB-ckptN`` rows).
        lora: overrides of the benchmark's LoRA settings (:func:`bench_lora`), e.g.
            ``{'train_embeddings': False}``. They take effect when the model is built
            (``build_model(shape, device, lora=cfg.lora)``); :func:`run_one` refuses a model built with
            other settings.
    """

    name: str
    batch_size: int
    cache: str = "off"
    fused_adamw: bool = False
    compile_llm: bool = False
    compile_decoder: bool = False
    gradient_checkpointing: bool | int = False
    lora: Mapping[str, Any] = field(default_factory=dict)


def run_configs(names: list[str], *, ref_batch: int, opt_batch: int, compile_llm: bool) -> list[RunConfig]:
    """``ref`` = the reference recipe's step (batch 2, no cache); ``opt`` = cache + large batch +
    fused AdamW; ``opt-b2`` = the optimised step at the reference batch (the memory target);
    ``ckpt`` = reference + gradient checkpointing."""
    table = {
        "ref": RunConfig("ref", ref_batch),
        "opt": RunConfig("opt", opt_batch, cache="memory", fused_adamw=True, compile_llm=compile_llm),
        "opt-b2": RunConfig("opt-b2", ref_batch, cache="memory", fused_adamw=True, compile_llm=compile_llm),
        "ckpt": RunConfig("ckpt", ref_batch, gradient_checkpointing=True),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown configs {unknown} (known: {list(table)})")
    return [table[n] for n in names]


# --- building --------------------------------------------------------------------------------------
def bench_lora(shape: ModelShape, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The LoRA settings of a benchmark model: rank from the preset, ``alpha = 2 r``, dropout 0.05, trained
    embedding / head copies (the reference recipe), then ``overrides`` (a row's ``RunConfig.lora``) on top;
    keys the model does not know are refused by ``Sa2VAModel`` / ``apply_lora`` when it is built."""
    base = dict(r=shape.lora_r, alpha=2 * shape.lora_r, dropout=0.05, train_embeddings=True)
    return {**base, **dict(overrides or {})}


def build_model(shape: ModelShape, device: torch.device, lora: Mapping[str, Any] | None = None) -> Sa2VAModel:
    """Random-weight Sa2VA of ``shape`` built directly on ``device`` (bf16 frozen weights on CUDA), with
    the family's adapter (:attr:`ModelShape.family`), the config's ``trainable`` settings and the LoRA
    settings :func:`bench_lora` ``(shape, lora)``."""
    dtype = "bfloat16" if device.type == "cuda" else None
    with torch.device(device):
        model = Sa2VAModel(
            mllm=shape.family.build_mllm(shape, dtype),
            trainable=dict(shape.trainable) if shape.trainable else None,
            grounding_encoder=SAM2GroundingEncoder(
                config_name="sam2_hiera_l.yaml", overrides=shape.sam2_overrides, torch_dtype=dtype
            ),
            loss_mask=MaskLoss(bce_weight=2.0, dice_weight=0.5, resolution="low", point_sampling=True),
            lora=bench_lora(shape, lora),
        )
    return model.to(device)


def check_lora(model: Sa2VAModel, shape: ModelShape, cfg: RunConfig) -> None:
    """Raise ``ValueError`` unless ``model`` was built with the LoRA settings row ``cfg`` asks for."""
    want = {**DEFAULT_LORA, **bench_lora(shape, cfg.lora)}
    have = dict(model.lora_cfg)
    keys = sorted(set(want) | set(have))
    diff = {k: (have.get(k), want.get(k)) for k in keys if have.get(k) != want.get(k)}
    if diff:
        detail = ", ".join(f"{k}: built {b!r}, row wants {w!r}" for k, (b, w) in diff.items())
        raise ValueError(
            f"row {cfg.name!r} (lora overrides {dict(cfg.lora)}) runs on a model built with other LoRA "
            f"settings ({detail}): build it with build_model(shape, device, lora=cfg.lora)"
        )


def lora_label(overrides: Mapping[str, Any]) -> str:
    """Table text of a row's LoRA overrides: ``train_embeddings=new_tokens`` (``-`` for none)."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "-"


def load_samples(
    shape: ModelShape, tokenizer: Any, data_root: str | Path, num_images: int, workers: int
) -> list[dict]:
    """``num_images`` preprocessed samples (5 masks each) of the bundled data set, with the family's image
    processor (:meth:`BenchFamily.image_processor`)."""
    from xtuner.utils import PROMPT_TEMPLATE

    root = Path(data_root)
    processor = Sa2VAProcessor(
        tokenizer=tokenizer,
        template=PROMPT_TEMPLATE.qwen_chat,
        image_processor=shape.family.image_processor(shape),
        sam2_size=shape.sam2_image_size,
    )
    ds = RefSegDataset(
        ann_file=str(root / "annotations.json"),
        image_root=str(root / "images"),
        processor=processor,
        objects_per_image=5,
        check_images=False,
    )
    n = min(num_images, len(ds))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, list(range(n))),
        batch_size=None,
        num_workers=workers,
        collate_fn=lambda x: x,
    )
    return list(loader)


def make_batches(samples: list[dict], batch_size: int, count: int, pin: bool) -> list[dict]:
    """``count`` collated batches cycling through ``samples`` (with cache digests, pinned on CUDA)."""
    out = []
    for b in range(count):
        items = [samples[(b * batch_size + j) % len(samples)] for j in range(batch_size)]
        data = sa2va_collate(items, digests=True)
        if pin:
            data["data"] = data["data"].pin_memory()
        out.append(data)
    return out


# --- timing helpers --------------------------------------------------------------------------------
class Timer:
    """Wall time of a region, synchronising the device around it (profiling pass only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        t = time.perf_counter()
        yield
        self.sync()
        self.times.setdefault(name, []).append(time.perf_counter() - t)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median(self, name: str) -> float:
        v = self.times.get(name)
        return statistics.median(v) if v else 0.0


def matmul_rate(device: torch.device, size: int | None = None, reps: int = 20) -> float:
    """Measured dense matmul rate in FLOP/s: bf16 on CUDA (8192^3), fp32 on CPU (512^3)."""
    if device.type == "cuda":
        n, dtype = size or 8192, torch.bfloat16
    else:
        n, dtype, reps = size or 512, torch.float32, 5
    gen = torch.Generator(device=device).manual_seed(0)
    sets = [
        (torch.randn(n, n, device=device, dtype=dtype, generator=gen),
         torch.randn(n, n, device=device, dtype=dtype, generator=gen))
        for _ in range(3)
    ]  # fmt: skip
    for a, b in sets:
        a @ b
    times = []
    for i in range(reps):
        a, b = sets[i % len(sets)]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


# --- one configuration -----------------------------------------------------------------------------
#: Messages of PyTorch's CPU allocator when an allocation fails (a ``RuntimeError``, not an
#: ``OutOfMemoryError``, in torch 2.14: ``DefaultCPUAllocator: can't allocate memory: ...``).
_CPU_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed device or host allocation (``torch.OutOfMemoryError`` on CUDA, the CPU
    allocator's ``RuntimeError``)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_OOM_MESSAGES)


def benchmark_device(name: str) -> torch.device:
    """The device named ``name``; on CUDA with TF32 matmuls on (every benchmark row's setting)."""
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def device_name(device: torch.device) -> str:
    """The card's name on CUDA (``NVIDIA H100 80GB HBM3``), else the device type (``cpu``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def free_memory(device: torch.device) -> None:
    """Collect garbage (an exception's frames hold activations) and return cached blocks to the driver."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def oom_message(device: torch.device, batch_size: int | None = None, during: str = "") -> str:
    """The table's text for a configuration that ran out of memory:
    ``out of memory at batch 16 on NVIDIA H100 80GB HBM3 (warm-up)``."""
    at = f" at batch {batch_size}" if batch_size is not None else ""
    return f"out of memory{at} on {device_name(device)}" + (f" ({during})" if during else "")


@dataclass
class Result:
    model: str
    config: RunConfig
    samples_per_s: float = 0.0
    step_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    peak_gib: float = 0.0
    flops: SampleFlops | None = None
    tokens: float = 0.0
    #: padded positions / all positions of the collated batches (mean over the distinct batches)
    pad_frac: float = 0.0
    #: fp32 logits of one step at the supervised positions (N x V x 4 bytes) and at every position
    #: (B x L x V x 4), GiB (mean over the distinct batches); see :func:`logit_bytes`
    sup_logits_gib: float = 0.0
    all_logits_gib: float = 0.0
    #: wall time of the first warm-up step (it fills the feature cache, if any, and compiles the layers
    #: with ``compile_llm``)
    first_step_s: float = 0.0
    #: ``compile_llm``: layers compiled and graphs dynamo compiled during the row (0 otherwise)
    compiled_layers: int = 0
    compiled_graphs: int = 0
    syncs: int = -1
    sync_sites: list[str] = field(default_factory=list)
    loss: float = float("nan")
    #: ``kernel_profile``: :meth:`bench.harness.kernel_profile.KernelSummary.as_dict` of one extra step
    #: (CUDA), or ``{"error": ...}`` when profiling failed; empty when not asked for or not on CUDA
    kernels: dict = field(default_factory=dict)
    error: str = ""


class Trainer:
    """Holds the model, the optimiser and the autocast settings of one run configuration."""

    def __init__(self, model: Sa2VAModel, cfg: RunConfig, device: torch.device) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        self.amp = device.type == "cuda"
        self.params = [p for p in model.parameters() if p.requires_grad]
        kwargs: dict[str, Any] = dict(lr=4e-5, betas=(0.9, 0.999), weight_decay=0.05)
        if cfg.fused_adamw and device.type == "cuda":
            kwargs["fused"] = True
        self.opt = torch.optim.AdamW(self.params, **kwargs)

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=self.device.type == "cuda")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def step(self, data: dict) -> torch.Tensor:
        """One training step as the runner does it; returns the loss (not read back)."""
        data = self.model.data_preprocessor(data, True)
        with self.autocast():
            losses = self.model(**data, mode="loss")
            loss = sum(losses.values())
        loss.backward()
        self.optimizer_step()
        return loss.detach()

    def staged_step(self, data: dict, timer: Timer) -> torch.Tensor:
        """The same step, split into timed stages (see module doc)."""
        m = self.model
        with timer("h2d"):
            data = m.data_preprocessor(data, True)
        batch = data["data"]
        with self.autocast():
            if m.feature_cache is not None:
                with timer("cache"):
                    vit_tokens, feats = m.encode_images(batch)  # the model's own call of the cache
            else:
                grid = {} if batch.image_grid_thw is None else {"image_grid_thw": batch.image_grid_thw}
                with timer("vit"), torch.no_grad():
                    pixels = batch.pixel_values.to(self.device, non_blocking=True)
                    vit_tokens = m.mllm.encode_vit(pixels, **grid)
                with timer("sam2_encoder"), torch.no_grad():
                    feats = m.grounding_encoder.encode_image(
                        batch.g_pixel_values.to(self.device, non_blocking=True)
                    )
            with timer("llm_fwd"):
                inputs = dict(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    vit_tokens=vit_tokens,
                    image_slots_checked=batch.seg_counts is not None,
                    image_grid_thw=batch.image_grid_thw,  # Qwen-VL M-RoPE (None for InternVL)
                )
                # The LM head where the model's training loss applies it (Sa2VAModel.lm_logits).
                if m.lm_logits == "supervised":
                    lm_hidden, hidden = m.mllm.decode(**inputs)
                    loss_lm = m.lm_loss_supervised(lm_hidden, batch.labels, batch.lm_positions)
                else:
                    logits, hidden = m.mllm(**inputs)
                    loss_lm = m.lm_loss(logits, batch.labels)
                loss_lm = m.lm_loss_weight * loss_lm
                pos, counts = m.seg_positions(batch.input_ids, batch.seg_counts)
                seg = m.text_hidden_fcs(hidden.flatten(0, 1).index_select(0, pos))
            with timer("decoder_fwd"):
                seg_leaf = seg.detach().requires_grad_(True)
                obj_to_img = torch.div(pos, hidden.shape[1], rounding_mode="floor")
                masks = m.grounding_encoder.decode_masks(feats, seg_leaf, obj_to_img)["masks"]
                mask_losses = m.loss_mask(masks, batch.masks, counts)
                loss_dec = sum(mask_losses.values())
        with timer("decoder_bwd"):
            loss_dec.backward()
        with timer("llm_bwd"):
            torch.autograd.backward([loss_lm, seg], [torch.ones_like(loss_lm), seg_leaf.grad])
        with timer("optimizer"):
            self.optimizer_step()
        return (loss_lm + loss_dec).detach()


def count_syncs(trainer: Trainer, data: dict) -> tuple[int, list[str]]:
    """Host-device syncs of one step (CUDA only), with the source lines that caused them."""
    if trainer.device.type != "cuda":
        return -1, []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.step(data)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})
    return len(hits), sites


def profiled_kernels(trainer: Trainer, data: dict) -> dict:
    """Device kernels of one more step by kind (:func:`bench.harness.kernel_profile.profile_cuda`);
    ``{"error": ...}`` when the profiler fails (the row's figures stand without it)."""
    from bench.harness.kernel_profile import profile_cuda

    try:
        return profile_cuda(lambda: trainer.step(data)).as_dict()
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if is_out_of_memory(e):
            raise
        return {"error": f"kernel profile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"}


def sample_flops(
    model: Sa2VAModel, shape: ModelShape, batch: dict, cached: bool
) -> tuple[SampleFlops, float]:
    """Model FLOPs per sample of ``batch`` (analytic for vision tower / LLM; flop counter for SAM2), tokens.

    The LLM is counted over each sample's real tokens (image tokens included) with the head at every
    position, plus the family's image path (InternVL ``mlp1``, Qwen3-VL DeepStack additions) and
    ``text_hidden_fcs`` at the ``[SEG]`` tokens."""
    b = batch["data"]
    family = shape.family
    lengths = b.attention_mask.sum(dim=1).tolist()
    llm_cfg = dict(shape.llm_config)
    llm_cfg["vocab_size"] = model.mllm.base_llm().get_output_embeddings().weight.shape[0]
    llm = statistics.mean(llm_forward_flops(llm_cfg, n, lora_r=shape.lora_r) for n in lengths)
    h = llm_cfg["hidden_size"]
    llm += family.image_path_forward_flops(shape, model, b)
    n_obj = sum(m.shape[0] for m in b.masks) / b.batch_size
    llm += n_obj * 2 * (h * h + h * model.grounding_encoder.hidden_dim)
    vit = 0.0 if cached else family.vision_forward_flops(shape, b)
    ge = model.grounding_encoder
    device = next(model.parameters()).device
    img = torch.randn(1, 3, ge.image_size, ge.image_size, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
        sam2_enc = counted_flops(ge.encode_image, img)
        feats = ge.encode_image(img)
        k = max(1, round(n_obj))
        emb = torch.randn(k, ge.hidden_dim, device=device)
        dec = counted_flops(ge.decode_masks, feats, emb, torch.zeros(k, dtype=torch.long, device=device))
    flops = SampleFlops(
        vit=vit, sam2_encoder=0.0 if cached else sam2_enc, llm=3 * llm, decoder=3 * dec * n_obj / k
    )
    return flops, statistics.mean(lengths)


def padding_fraction(batch: dict) -> float:
    """Padded positions / all positions of a collated batch (``attention_mask == 0``)."""
    return 1.0 - float(batch["data"].attention_mask.float().mean())


def logit_bytes(batch: dict, vocab: int) -> tuple[int, int]:
    """Bytes of one fp32 copy of the LM logits of a collated batch ``(supervised, all)``: ``N x V x 4``
    for the ``N`` positions whose next token is labelled (what ``lm_logits='supervised'`` computes, and
    what a fused linear cross-entropy would never materialise) and ``B x L x V x 4`` for every position
    of the padded batch (``lm_logits='all'``)."""
    labels = batch["data"].labels
    n_sup = int((labels[:, 1:] != -100).sum())
    return n_sup * vocab * 4, labels.numel() * vocab * 4


def run_one(
    model: Sa2VAModel,
    shape: ModelShape,
    cfg: RunConfig,
    samples: list[dict],
    *,
    device: torch.device,
    steps: int,
    warmup: int,
    profile_steps: int,
    cache_dir: str | None,
    kernel_profile: bool = False,
) -> Result:
    res = Result(shape.name, cfg)
    logger = MMLogger.get_current_instance()
    check_lora(model, shape, cfg)
    # Configure the shared model for this run.
    cache_cfg = {"mode": cfg.cache}
    if cfg.cache == "disk":
        cache_cfg["dir"] = cache_dir
    model.feature_cache = build_feature_cache(cache_cfg)
    model.data_preprocessor.keep_pixels_on_host = model.feature_cache is not None
    base = model.mllm.base_llm()
    ckpt_lm = shape.family.checkpointed_lm(model)
    if cfg.gradient_checkpointing is True:
        ckpt_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # PEFT with frozen input embeddings needs inputs that require grad; ours are trained copies.
    elif ckpt_lm.is_gradient_checkpointing:
        ckpt_lm.gradient_checkpointing_disable()
    if not isinstance(cfg.gradient_checkpointing, bool) and cfg.gradient_checkpointing:
        model.mllm.enable_gradient_checkpointing(cfg.gradient_checkpointing)  # the first N decoder layers
    model.train()
    trainer = None
    stage = "setting up"
    stack = contextlib.ExitStack()  # the compiled layers (compile_llm)
    try:
        n_distinct = max(1, math.ceil(len(samples) / cfg.batch_size))
        batches = make_batches(samples, cfg.batch_size, n_distinct, pin=device.type == "cuda")
        res.pad_frac = statistics.mean(padding_fraction(b) for b in batches)
        vocab = base.get_output_embeddings().weight.shape[0]
        sizes = [logit_bytes(b, vocab) for b in batches]
        res.sup_logits_gib = statistics.mean(s for s, _ in sizes) / 2**30
        res.all_logits_gib = statistics.mean(a for _, a in sizes) / 2**30
        graphs_before = dynamo_graphs()
        if cfg.compile_llm:
            lengths = {b["data"].input_ids.shape[1] for b in batches}
            dynamic = False if len(lengths) == 1 else None
            res.compiled_layers = stack.enter_context(compiled_decoder_layers(model, dynamic=dynamic))
            logger.info(f"{shape.name}/{cfg.name}: {res.compiled_layers} decoder layers compiled "
                        f"(dynamic={dynamic}; padded lengths {sorted(lengths)})")  # fmt: skip
        if cfg.compile_decoder:
            objects = {sum(m.shape[0] for m in b["data"].masks) for b in batches}
            dynamic = False if len(objects) == 1 else None
            stack.enter_context(compiled_mask_decoder(model, dynamic=dynamic))
            logger.info(f"{shape.name}/{cfg.name}: mask decoder compiled (dynamic={dynamic}; objects per "
                        f"step {sorted(objects)})")  # fmt: skip
        trainer = Trainer(model, cfg, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        stage = "warm-up"
        # Warm-up: every distinct batch once (fills the cache), then `warmup` more steps.
        for i in range(n_distinct + warmup):
            t_step = time.perf_counter()
            loss = trainer.step(batches[i % n_distinct])
            if i == 0:
                float(loss)  # waits for the step
                res.first_step_s = time.perf_counter() - t_step
        res.loss = float(loss)
        stage = "timed steps"
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for i in range(steps):
            trainer.step(batches[i % n_distinct])
        if device.type == "cuda":
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        res.step_s = elapsed / steps
        res.samples_per_s = cfg.batch_size / res.step_s
        if device.type == "cuda":
            res.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        stage = "profiling steps"
        timer = Timer(device)
        for i in range(profile_steps):
            trainer.staged_step(batches[i % n_distinct], timer)
        res.stages = {k: timer.median(k) for k in timer.times}
        res.syncs, res.sync_sites = count_syncs(trainer, batches[0])
        if kernel_profile and device.type == "cuda":
            stage = "kernel profile"
            res.kernels = profiled_kernels(trainer, batches[0])
        res.flops, res.tokens = sample_flops(model, shape, batches[0], cached=model.feature_cache is not None)
        if model.feature_cache is not None:
            logger.info(f"{shape.name}/{cfg.name}: feature cache {model.feature_cache.stats()}")
        res.compiled_graphs = dynamo_graphs() - graphs_before if cfg.compile_llm or cfg.compile_decoder else 0
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        res = Result(shape.name, cfg, error=oom_message(device, cfg.batch_size, stage))
        logger.warning(f"{shape.name}/{cfg.name}: {res.error}: {str(e).splitlines()[0][:200]}")
    finally:
        trainer = batches = None  # the optimiser state and pinned batches
        model.zero_grad(set_to_none=True)
        model.feature_cache = None
        model.data_preprocessor.keep_pixels_on_host = False
        stack.close()
        free_memory(device)
    return res


# --- report ----------------------------------------------------------------------------------------
STAGE_COLUMNS = (
    ("ViT", ("vit",)),
    ("SAM2enc", ("sam2_encoder",)),
    ("cache", ("cache",)),
    ("LLM f+b", ("llm_fwd", "llm_bwd")),
    ("dec f+b", ("decoder_fwd", "decoder_bwd")),
    ("optim", ("optimizer",)),
    ("h2d", ("h2d",)),
)


def format_table(results: list[Result], peak_flops: float, device_name: str) -> str:
    w = max([6] + [len(r.model) + 1 for r in results])  # the model column
    head = (
        f"{'model':<{w}}{'config':<8}{'batch':>6}{'cache':>7}{'samp/s':>9}{'step ms':>9}"
        + "".join(f"{c:>9}" for c, _ in STAGE_COLUMNS)
        + f"{'peak GiB':>10}{'GF/samp':>10}{'MFU%':>7}{'LLM MFU%':>9}{'tok':>6}{'pad%':>6}{'syncs':>6}"
        + f"{'supL MiB':>9}{'allL MiB':>9}"
    )
    lines = [
        f"Sa2VA training benchmark on {device_name}; matmul peak measured {peak_flops / 1e12:.3g} TFLOP/s",
        "stage columns: median ms per step of the synchronised profiling pass; samp/s and step ms from "
        "the un-synchronised throughput pass",
        "pad%: padded positions / all positions of the batch; supL / allL MiB: one fp32 copy of the step's "
        "LM logits at the supervised positions / at every position",
        head,
        "-" * len(head),
    ]
    for r in results:
        c = r.config
        if r.error:
            lines.append(f"{r.model:<{w}}{c.name:<8}{c.batch_size:>6}{c.cache:>7}  {r.error}")
            continue
        stage_ms = [sum(r.stages.get(k, 0.0) for k in keys) * 1e3 for _, keys in STAGE_COLUMNS]
        f = r.flops
        mfu = f.total * r.samples_per_s / peak_flops * 100 if f else 0.0
        llm_t = sum(r.stages.get(k, 0.0) for k in ("llm_fwd", "llm_bwd"))
        llm_mfu = f.llm * c.batch_size / llm_t / peak_flops * 100 if f and llm_t else 0.0
        lines.append(
            f"{r.model:<{w}}{c.name:<8}{c.batch_size:>6}{c.cache:>7}{r.samples_per_s:>9.2f}"
            f"{r.step_s * 1e3:>9.1f}"
            + "".join(f"{v:>9.1f}" for v in stage_ms)
            + f"{r.peak_gib:>10.2f}{(f.total if f else 0) / 1e9:>10.0f}{mfu:>7.1f}{llm_mfu:>9.1f}"
            f"{r.tokens:>6.0f}{r.pad_frac * 100:>6.1f}{r.syncs:>6}"
            f"{r.sup_logits_gib * 1024:>9.1f}{r.all_logits_gib * 1024:>9.1f}"
        )
    lines.append("")
    for r in results:
        if r.sync_sites:
            lines.append(f"syncs {r.model}/{r.config.name}: {', '.join(r.sync_sites[:8])}")
        if r.error or not r.flops:
            continue
        slowest = max(STAGE_COLUMNS, key=lambda sc: sum(r.stages.get(k, 0.0) for k in sc[1]))[0]
        lines.append(
            f"{r.model}/{r.config.name}: GFLOP/sample ViT {r.flops.vit / 1e9:.0f}, SAM2enc "
            f"{r.flops.sam2_encoder / 1e9:.0f}, LLM {r.flops.llm / 1e9:.0f}, "
            f"dec {r.flops.decoder / 1e9:.0f}; "
            f"largest stage: {slowest}; final loss {r.loss:.3f}"
        )
    return "\n".join(lines)


TARGETS = {"4b": (28.0, 24.0), "1b": (80.0, None)}


def target_lines(results: list[Result]) -> list[str]:
    """Target check: samples/s of the best cached config; peak memory at batch 2 with the cache."""
    out = []
    for model, (rate, mem) in TARGETS.items():
        rs = [r for r in results if r.model == model and not r.error]
        if not rs:
            continue
        best = max(rs, key=lambda r: r.samples_per_s)
        ok = "MET" if best.samples_per_s >= rate else "MISSED"
        out.append(
            f"target {model}: >= {rate:.0f} samples/s -> {best.samples_per_s:.1f} ({best.config.name}) {ok}"
        )
        b2 = [r for r in rs if r.config.batch_size <= 2 and r.config.cache != "off"]
        if mem is not None and b2:
            ok = "MET" if b2[0].peak_gib * 2**30 / 1e9 <= mem else "MISSED"
            out.append(
                f"target {model}: peak <= {mem:.0f} GB at batch 2 with cache -> "
                f"{b2[0].peak_gib * 2**30 / 1e9:.1f} GB {ok}"
            )
    return out
