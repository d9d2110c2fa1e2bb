"""Test helper: whether torch's inductor can compile on this host (it needs a C++ compiler on the CPU)."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def inductor_missing_reason() -> str:
    """Why inductor cannot compile on this host, or "" when it can."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # any failure to find a compiler means: inductor cannot run here
        return f"inductor has no C++ compiler on this host: {e}"
    return ""


#: Skips a test (or, as ``pytestmark``, a module) that compiles with inductor where it cannot.
needs_inductor = pytest.mark.skipif(
    bool(inductor_missing_reason()), reason=inductor_missing_reason() or "inductor is available"
)
