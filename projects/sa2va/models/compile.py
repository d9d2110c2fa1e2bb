"""Regional ``torch.compile``: each LLM decoder layer (``compile_llm``) and the SAM2 mask decoder
(``compile_decoder``) compiled in place, the rest eager.

The decoder layers of an LLM (``base_llm().model.layers``: Qwen2, InternLM2, the Qwen-VL text decoders)
run the same code on inputs of the same shapes, so dynamo compiles one graph (forward and, through
AOTAutograd, backward) and every layer reuses it: compile time is that of one layer, whatever the depth.
(That holds when the first layer's input requires grad, as the later layers' inputs do; it does whenever
the embeddings or ``mlp1`` train. Otherwise the first layer gets a second graph.) The embedding, rotary
table, attention-mask construction, final norm, head, ViT and SAM2 stay eager.

Compilation goes through :meth:`torch.nn.Module.compile`, which compiles the module's ``_call_impl`` in
place (``module._compiled_call_impl``): the module tree, its parameters and its ``state_dict`` keys are
unchanged (no ``_orig_mod.`` prefix), so checkpoints of a compiled and an eager model are interchangeable.
LoRA must be applied first: the PEFT ``LoraLayer`` wrappers are then inside the compiled region.

Shapes (``dynamic``): the layers' input is ``[B, L, H]``. With ``dynamic=None`` (the default of
:class:`LLMCompileSettings`, dynamo's automatic dynamic shapes) the first batch compiles a graph for its
``[B, L]``; the first batch of another length recompiles once, to a graph symbolic in the sizes that
changed (``L``; ``B`` when a smaller last batch comes), which then serves every later length. In the
transformers decoders (Qwen2, Qwen-VL) a batch without padding passes no attention mask, another input
signature with its own graph(s). A training run with variable padded lengths thus compiles a few graphs, not
one per length (6 iterations of the tiny demo: 3, a static and a symbolic one with a mask and one without).
``dynamic=True`` starts with the symbolic graphs (the tiny demo: 2, with and without a mask);
``dynamic=False`` compiles one graph per distinct ``[B, L]`` (best when every batch has one padded length,
as in the speed harness). ``torch._dynamo.config.recompile_limit`` (torch's
default: 8) caps the graphs of this code; beyond it the layers run eager (dynamo's behaviour; the
:class:`CompiledGraphLog` warns).

The SAM2 mask decoder (``compile_decoder``; ``sam2_model.sam_mask_decoder``, the trainable part of the mask
path) runs once per step on ``N`` objects (``[N, C, h, w]`` image embeddings repeated per object): its
many memory-bound element-wise ops (layer norms, GELUs, residual adds over ``N x 4096`` image tokens, the
transposed-convolution upscaling) are what compilation fuses. ``N`` changes with the batch, so with
``dynamic=None`` a second object count compiles one graph symbolic in ``N``. The per-image projections
before it (``conv_s0`` / ``conv_s1``), the prompt encoder, the best-mask selection and the losses stay eager.

Tested on the CPU (``tests/models/test_compile_option.py``): Qwen2 (InternVL) through the launcher with
inductor; Qwen2.5-VL, Qwen3-VL, the InternLM2 decoder layers with LoRA, gradient checkpointing and DDP (two
gloo ranks through ``tools/dist.sh``) with ``aot_eager``; the mask decoder on the tiny model over three
object counts with ``aot_eager`` and inductor (``tests/models/test_compile_decoder.py``). Not tested:
DeepSpeed (ZeRO-3 gathers parameters in module hooks, which would run inside the compiled region).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from mmengine.logging import MMLogger
from torch import nn

#: ``torch.compile`` backends accepted by :class:`LLMCompileSettings` (``aot_eager``: AOTAutograd graphs
#: without inductor's code generation; for debugging).
BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class LLMCompileSettings:
    """How a region is compiled (``Sa2VAModel(compile_llm=...)``, ``Sa2VAModel(compile_decoder=...)``).

    Attributes:
        dynamic: ``torch.compile``'s ``dynamic``: ``None`` (automatic dynamic shapes: a static graph
            first, one symbolic graph after the first size change), ``True`` (symbolic from the start),
            ``False`` (one graph per distinct input shape). See the module docstring.
        backend: one of :data:`BACKENDS`.
        mode: ``torch.compile``'s ``mode`` (``None``, ``'default'``, ``'reduce-overhead'``,
            ``'max-autotune'``, ``'max-autotune-no-cudagraphs'``).
        recompile_limit: sets ``torch._dynamo.config.recompile_limit`` (process-wide) when not ``None``;
            ``None`` keeps torch's value.
    """

    dynamic: bool | None = None
    backend: str = "inductor"
    mode: str | None = None
    recompile_limit: int | None = None

    def __post_init__(self) -> None:
        if self.dynamic not in (None, True, False):
            raise ValueError(f"dynamic must be None, True or False, got {self.dynamic!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.mode not in modes:
            raise ValueError(f"mode must be one of {modes}, got {self.mode!r}")
        if self.recompile_limit is not None and (
            not isinstance(self.recompile_limit, int) or self.recompile_limit < 1
        ):
            raise ValueError(f"recompile_limit must be a positive int or None, got {self.recompile_limit!r}")

    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`torch.nn.Module.compile`."""
        return {"dynamic": self.dynamic, "backend": self.backend, "mode": self.mode}


def compile_settings(
    option: bool | Mapping[str, Any] | LLMCompileSettings | None, name: str = "compile_llm"
) -> LLMCompileSettings | None:
    """The settings of a ``compile_llm`` / ``compile_decoder`` option: ``False`` / ``None`` -> ``None``
    (eager), ``True`` -> the defaults, a mapping -> those fields (unknown keys are refused).

    Args:
        option: the option's value.
        name: the option's name, for the error messages.

    Raises:
        ValueError: an unknown key or a bad value (the message starts with ``name``).
        TypeError: an option of another type.
    """
    if option is None or option is False:
        return None
    if option is True:
        return LLMCompileSettings()
    if isinstance(option, LLMCompileSettings):
        return option
    if isinstance(option, Mapping):
        known = [f.name for f in fields(LLMCompileSettings)]
        unknown = sorted(set(option) - set(known))
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown} (known: {known})")
        try:
            return LLMCompileSettings(**dict(option))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    raise TypeError(
        f"{name} must be a bool, a dict of {[f.name for f in fields(LLMCompileSettings)]} or "
        f"LLMCompileSettings, got {type(option).__name__}: {option!r}"
    )


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers ``llm.model.layers`` of a transformers causal LM (``MLLMAdapter.base_llm()``).

    Raises:
        TypeError: the LM has no non-empty ``ModuleList`` there.
    """
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"compile_llm: {type(llm).__name__} has no decoder layers at .model.layers")
    return layers


def mask_decoder(model: nn.Module) -> nn.Module:
    """The SAM2 mask decoder of a ``Sa2VAModel`` (``grounding_encoder.sam2_model.sam_mask_decoder``).

    Raises:
        TypeError: the model's grounding encoder has none there.
    """
    sam = getattr(getattr(model, "grounding_encoder", None), "sam2_model", None)
    decoder = getattr(sam, "sam_mask_decoder", None)
    if not isinstance(decoder, nn.Module):
        raise TypeError(
            f"compile_decoder: {type(model).__name__} has no grounding_encoder.sam2_model.sam_mask_decoder"
        )
    return decoder


def is_compiled(module: nn.Module) -> bool:
    """Whether :meth:`torch.nn.Module.compile` is in effect on ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_layers(layers: Iterable[nn.Module], settings: LLMCompileSettings) -> int:
    """:meth:`torch.nn.Module.compile` on each module of ``layers`` that is not compiled already (in place;
    keys and parameters unchanged).

    A compiled module is left as it is: ``Sa2VAModel.train()`` calls this on every ``train()``, and
    ``nn.Module.compile`` builds a new ``torch.compile`` wrapper each time: ``model.train()`` took 69.9 ms
    with the 36 decoder layers and the mask decoder of Sa2VA-4B compiled against 10.7 ms eager, on an H100
    box with torch 2.11, when mmengine's loop called it every iteration (bench/records/speed_s11).

    Returns:
        the number of layers compiled by this call.
    """
    if settings.recompile_limit is not None:
        torch._dynamo.config.recompile_limit = settings.recompile_limit
    kwargs = settings.compile_kwargs()
    n = 0
    for layer in layers:
        if is_compiled(layer):
            continue
        layer.compile(**kwargs)
        n += 1
    return n


def restore_eager(layers: Iterable[nn.Module]) -> None:
    """Undo :func:`compile_layers`: each layer's ``__call__`` is the eager one again. The graphs stay in
    dynamo's cache (a later :func:`compile_layers` reuses them) until ``torch._dynamo.reset()``."""
    for layer in layers:
        layer._compiled_call_impl = None  # what nn.Module.compile set; None = the eager __call__


@contextlib.contextmanager
def compiled_decoder_layers(model: nn.Module, *, dynamic: bool | None) -> Iterator[int]:
    """The decoder layers of ``model`` (a ``Sa2VAModel``: ``model.mllm.base_llm()``) compiled while the
    context is open; on exit the eager layers are restored and dynamo is reset (its graphs and guards
    refer to this model). Used by the speed harness for one row.

    Args:
        dynamic: :attr:`LLMCompileSettings.dynamic`.

    Yields:
        the number of compiled layers.

    Raises:
        RuntimeError: the layers are compiled already (the model was built with ``compile_llm``).
    """
    layers = decoder_layers(model.mllm.base_llm())
    if any(is_compiled(layer) for layer in layers):
        raise RuntimeError("compiled_decoder_layers: the decoder layers are compiled already (compile_llm)")
    with _compiled(layers, dynamic) as n:
        yield n


@contextlib.contextmanager
def compiled_mask_decoder(model: nn.Module, *, dynamic: bool | None) -> Iterator[int]:
    """:func:`compiled_decoder_layers` for the SAM2 mask decoder (:func:`mask_decoder`): compiled while the
    context is open (yields 1); a ``RuntimeError`` when it is compiled already (``compile_decoder``)."""
    decoder = mask_decoder(model)
    if is_compiled(decoder):
        raise RuntimeError("compiled_mask_decoder: the mask decoder is compiled already (compile_decoder)")
    with _compiled([decoder], dynamic) as n:
        yield n


@contextlib.contextmanager
def _compiled(modules: list[nn.Module] | nn.ModuleList, dynamic: bool | None) -> Iterator[int]:
    n = compile_layers(modules, LLMCompileSettings(dynamic=dynamic))
    try:
        yield n
    finally:
        restore_eager(modules)
        torch._dynamo.reset()


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (``torch._dynamo`` counters; all compiled code of
    the process, not only the decoder layers)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledGraphLog:
    """Logs (mmengine logger) each time the number of graphs dynamo compiled has grown, with the LLM input
    shape that caused it, and warns once when it reaches ``torch._dynamo.config.recompile_limit`` (beyond
    it new shapes run eager). Cheap: one counter read per call, no device sync."""

    def __init__(self, option: str = "compile_llm") -> None:
        self.option = option  # the log lines' prefix
        self.start = dynamo_graphs()
        self.seen = 0
        self.warned = False

    @property
    def graphs(self) -> int:
        """Graphs compiled since this log was created."""
        return self.seen

    def update(self, shape: tuple[int, ...]) -> None:
        """Call after a training forward of the LLM whose ``input_ids`` had ``shape`` ``(B, L)``."""
        n = dynamo_graphs() - self.start
        if n == self.seen:
            return
        self.seen = n
        logger = MMLogger.get_current_instance()
        logger.info(
            f"{self.option}: {n} graph(s) compiled so far (the latest for LLM input [B, L] = {list(shape)})"
        )
        limit = int(torch._dynamo.config.recompile_limit)
        if n >= limit and not self.warned:
            self.warned = True
            logger.warning(
                f"{self.option}: {n} graphs reached torch._dynamo.config.recompile_limit={limit}: compiled "
                f"regions run eager on new input shapes; use {self.option}=dict(dynamic=None or True), or "
                "raise recompile_limit"
            )
