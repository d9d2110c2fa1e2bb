"""Regional ``torch.compile`` of the LLM: each decoder layer is compiled in place, the rest stays eager.

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

Tested on the CPU (``tests/models/test_compile_option.py``): Qwen2 (InternVL) through the launcher with
inductor; Qwen2.5-VL, Qwen3-VL, the InternLM2 decoder layers with LoRA, gradient checkpointing and DDP (two
gloo ranks through ``tools/dist.sh``) with ``aot_eager``. Not tested: DeepSpeed (ZeRO-3 gathers parameters
in module hooks, which would run inside the compiled region).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
    """How the decoder layers are compiled (``Sa2VAModel(compile_llm=...)``).

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
            raise ValueError(f"compile_llm: dynamic must be None, True or False, got {self.dynamic!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"compile_llm: backend must be one of {BACKENDS}, got {self.backend!r}")
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.mode not in modes:
            raise ValueError(f"compile_llm: mode must be one of {modes}, got {self.mode!r}")
        if self.recompile_limit is not None and (
            not isinstance(self.recompile_limit, int) or self.recompile_limit < 1
        ):
            raise ValueError(
                f"compile_llm: recompile_limit must be a positive int or None, got {self.recompile_limit!r}"
            )

    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`torch.nn.Module.compile`."""
        return {"dynamic": self.dynamic, "backend": self.backend, "mode": self.mode}


def compile_settings(
    option: bool | Mapping[str, Any] | LLMCompileSettings | None,
) -> LLMCompileSettings | None:
    """The settings of a ``compile_llm`` option: ``False`` / ``None`` -> ``None`` (eager), ``True`` -> the
    defaults, a mapping -> those fields (unknown keys are refused).

    Raises:
        ValueError: an unknown key or a bad value.
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
            raise ValueError(f"compile_llm: unknown keys {unknown} (known: {known})")
        return LLMCompileSettings(**dict(option))
    raise TypeError(
        f"compile_llm must be a bool, a dict of {[f.name for f in fields(LLMCompileSettings)]} or "
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


def is_compiled(module: nn.Module) -> bool:
    """Whether :meth:`torch.nn.Module.compile` is in effect on ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_layers(layers: nn.ModuleList, settings: LLMCompileSettings) -> int:
    """:meth:`torch.nn.Module.compile` on each layer (in place; keys and parameters unchanged).

    Returns:
        the number of layers compiled.
    """
    if settings.recompile_limit is not None:
        torch._dynamo.config.recompile_limit = settings.recompile_limit
    kwargs = settings.compile_kwargs()
    for layer in layers:
        layer.compile(**kwargs)
    return len(layers)


def restore_eager(layers: nn.ModuleList) -> None:
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
    n = compile_layers(layers, LLMCompileSettings(dynamic=dynamic))
    try:
        yield n
    finally:
        restore_eager(layers)
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

    def __init__(self) -> None:
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
            f"compile_llm: {n} graph(s) compiled so far (the latest for LLM input [B, L] = {list(shape)})"
        )
        limit = int(torch._dynamo.config.recompile_limit)
        if n >= limit and not self.warned:
            self.warned = True
            logger.warning(
                f"compile_llm: {n} graphs reached torch._dynamo.config.recompile_limit={limit}: decoder "
                "layers of new input shapes run eager; use compile_llm=dict(dynamic=None or True), or "
                "raise recompile_limit"
            )
