"""Build-time helpers: skip weight initialisers whose output is overwritten, build in the target dtype.

Building Sa2VA at real size is dominated by random number generation on the host (1.5 B values for the
1B shapes, several of them drawn twice). Three tools cut it down:

* :func:`no_weight_init` (used by ``Sa2VAModel`` when ``load_weights`` is given): parameters are
  allocated but no initialiser runs, neither ``torch.nn.init`` (module constructors) nor transformers'
  ``_init_weights`` (transformers 4.48 ``no_init_weights``), nor the ones of this project's modules
  (they check :func:`weight_init_enabled`). Every such tensor must then be written by the loader;
  ``Sa2VAModel`` checks that. Tensors a constructor computes without an initialiser (RoPE ``inv_freq``,
  ``torch.ones`` norm weights, SAM2 ``freqs_cis``) are computed as usual.
* :func:`torch_init_disabled`: only ``torch.nn.init`` becomes a no-op, for modules whose own
  initialisation afterwards overwrites every tensor anyway (transformers ``_init_weights`` of an LM,
  ``InternVisionModel._init_weights``): the default Kaiming init of their ``nn.Linear`` is not drawn.
* :func:`default_dtype`: tensors are created in the target dtype (no float32 copy converted later).

Why not build on the meta device and materialise afterwards (``torch.device('meta')`` + ``to_empty``):
``to_empty`` leaves every tensor uninitialised, including the ones constructors compute rather than draw
and that no checkpoint holds (non-persistent RoPE ``inv_freq`` buffers of the LLMs and of Qwen-VL's vision
tower, SAM2's ``freqs_cis``, ``torch.ones`` norm weights); each family would need code that recomputes them,
in SAM2's case inside a package we depend on. And the random-weight configs (the tiny demo, ``*_random``)
rely on the exact sequence of random draws at build time: their frozen parts are a function of the seed,
and an export is rebuilt by drawing the same sequence again (``tests/engine/test_golden_trajectory.py``,
``tests/engine/test_build_model.py``). The patches here are scoped context managers that restore the
functions they replace on exit.

A module first imported inside :func:`torch_init_disabled` that binds an initialiser by name (``sam2``
1.1.0 ``sam2/modeling/sam2_base.py``: ``from torch.nn.init import trunc_normal_``; hydra imports it when a
build instantiates the SAM2 yaml) would keep the no-op after the window closes: every later build in the
process would leave SAM2's ``no_mem_embed`` / ``no_mem_pos_enc`` / ``maskmem_tpos_enc`` / ``no_obj_ptr`` at
zero and draw every later random tensor from a shifted stream. On exit, such names in the modules
imported inside the window are bound to the real initialisers again.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers import modeling_utils

__all__ = [
    "default_dtype",
    "no_weight_init",
    "torch_init_disabled",
    "trunc_normal_fp32_",
    "weight_init_enabled",
    "weight_init_restored",
]

# The in-place initialisers of torch.nn.init that module constructors call (names as transformers 4.48's
# TORCH_INIT_FUNCTIONS, which its own `no_init_weights` replaces).
_ORIGINAL_INIT = dict(modeling_utils.TORCH_INIT_FUNCTIONS)
_STATE = {"weight_init": True}


def _make_skip(name: str) -> Callable[..., None]:
    """A no-op standing in for ``torch.nn.init.<name>``."""

    def _skip(*args: object, **kwargs: object) -> None:
        return None

    _skip.__qualname__ = f"skipped_{name}"
    return _skip


# One distinct no-op per initialiser, so a module that bound one by name gets the right function back.
_SKIPS = {name: _make_skip(name) for name in _ORIGINAL_INIT}


def _rebind_captured_skips(module_names: set[str], targets: dict[str, Callable]) -> list[str]:
    """In the modules ``module_names``, replace every global that is the no-op of initialiser ``name``
    by ``targets[name]``.

    A module imported inside :func:`torch_init_disabled` that ran ``from torch.nn.init import
    trunc_normal_`` holds the no-op as a global; left so, it skips that initialiser for good.

    Returns:
        ``module.global`` of every name rebound.
    """
    by_id = {id(skip): (skip, targets[name]) for name, skip in _SKIPS.items()}
    rebound = []
    for module_name in sorted(module_names):
        module = sys.modules.get(module_name)
        if not isinstance(module, types.ModuleType):
            continue
        namespace = vars(module)
        for key, value in list(namespace.items()):
            skip, target = by_id.get(id(value), (None, None))
            if skip is not None and value is skip:
                namespace[key] = target
                rebound.append(f"{module_name}.{key}")
    return rebound


@contextlib.contextmanager
def torch_init_disabled(disabled: bool = True) -> Iterator[None]:
    """``torch.nn.init`` initialisers become no-ops (``disabled``) or the real ones (``False``) inside.

    Nests: the functions in place on entry are restored on exit. A module first imported inside a
    disabled window that bound an initialiser by name gets, on exit, the function restored on
    ``torch.nn.init`` if that is this module's no-op of an enclosing window (which repairs it when it
    closes), else the real initialiser (see the module docstring).
    """
    saved = {name: getattr(nn.init, name) for name in _ORIGINAL_INIT}
    imported_before = set(sys.modules)
    for name, fn in _ORIGINAL_INIT.items():
        setattr(nn.init, name, _SKIPS[name] if disabled else fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
        if disabled:
            targets = {n: fn if fn is _SKIPS[n] else _ORIGINAL_INIT[n] for n, fn in saved.items()}
            _rebind_captured_skips(set(sys.modules) - imported_before, targets)


def weight_init_enabled() -> bool:
    """False inside :func:`no_weight_init`: this project's modules then skip their own initialisers."""
    return _STATE["weight_init"]


@contextlib.contextmanager
def no_weight_init(enabled: bool = True) -> Iterator[None]:
    """Build modules without running any weight initialiser (no-op when ``enabled`` is False).

    The tensors hold whatever the allocator returned until a loader writes them.
    """
    if not enabled:
        yield
        return
    previous = _STATE["weight_init"]
    _STATE["weight_init"] = False
    try:
        with modeling_utils.no_init_weights(), torch_init_disabled():
            yield
    finally:
        _STATE["weight_init"] = previous


@contextlib.contextmanager
def weight_init_restored() -> Iterator[None]:
    """Inside :func:`no_weight_init`, build a small part that must be initialised (e.g. a module the
    checkpoint format has no place for) with every initialiser active again."""
    previous = _STATE["weight_init"]
    _STATE["weight_init"] = True
    try:
        with torch_init_disabled(False):
            yield
    finally:
        _STATE["weight_init"] = previous


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Floating-point tensors created without an explicit dtype get ``dtype`` inside (None: unchanged)."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def trunc_normal_fp32_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """``nn.init.trunc_normal_(tensor, std=std)`` drawn in float32 and rounded into ``tensor``'s dtype.

    ``trunc_normal_`` maps uniforms through ``erfinv``; in bfloat16 that quantises the distribution.
    """
    if tensor.dtype in (torch.float32, torch.float64):
        return nn.init.trunc_normal_(tensor, std=std)
    with torch.no_grad():
        tmp = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
        nn.init.trunc_normal_(tmp, std=std)
        return tensor.copy_(tmp)
