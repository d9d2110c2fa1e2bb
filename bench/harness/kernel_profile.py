"""Where the GPU time of one training step goes: device kernels by kind, and how much of the step the
device is idle (waiting for the host to launch work).

:func:`profile_cuda` runs a callable once under ``torch.profiler`` with CUDA activity only (no CPU op
events, so the trace of a ~10k-kernel step parses in seconds) and returns :func:`summarize` of its
kernels, memory copies and memsets. :func:`summarize` is pure: it takes ``(name, start_us, end_us)``
triples, so it is tested on the CPU with made-up kernels.

The kinds come from kernel names (:data:`KINDS`, the first match wins): cuBLAS / CUTLASS GEMMs
(``nvjet_*``, ``sm90_xmma_gemm_*``, ``cutlass_*``), attention (flash / memory-efficient / cuDNN SDPA),
kernels that ``torch.compile`` generated (``triton_*``), NCCL collectives, the optimiser's multi-tensor
kernels, normalisations and reductions, other element-wise ATen kernels, copies / memsets, and the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

#: (kind, name fragments): a kernel is of the first kind one of whose fragments its lower-cased name holds
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("copy", ("memcpy", "memset")),
    ("nccl", ("nccl",)),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "wgmma", "matmul")),
    ("compiled", ("triton_",)),
    ("optimizer", ("multi_tensor_apply", "fused_adam", "adamw")),
    ("norm/reduce", ("reduce", "norm", "softmax", "welford")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "index", "catarray", "fill", "dropout",
                     "gather", "scatter", "copy", "where")),
)  # fmt: skip
#: the columns of the kernel table, in order (``other``: kernels no fragment matched)
KIND_NAMES: tuple[str, ...] = (*(k for k, _ in KINDS), "other")


def kernel_kind(name: str) -> str:
    """The kind of a device kernel (or ``Memcpy ...`` / ``Memset ...`` event) from its name."""
    low = name.lower()
    for kind, fragments in KINDS:
        if any(f in low for f in fragments):
            return kind
    return "other"


@dataclass
class KernelSummary:
    """Device time of one profiled step (milliseconds; the step is the span from the first kernel's start
    to the last one's end)."""

    span_ms: float = 0.0
    #: time during which at least one kernel ran (the union of the kernels' intervals)
    busy_ms: float = 0.0
    kernels: int = 0
    #: kind -> summed kernel time (ms); kinds overlap in time only where streams run concurrently
    by_kind_ms: dict[str, float] = field(default_factory=dict)
    by_kind_count: dict[str, int] = field(default_factory=dict)
    #: the ``top`` kernels by summed time: ``[name (at most 90 characters), kind, ms, count]``
    top: list[list] = field(default_factory=list)

    @property
    def idle_ms(self) -> float:
        return self.span_ms - self.busy_ms

    def as_dict(self) -> dict:
        return asdict(self) | {"idle_ms": self.idle_ms}


def summarize(events: Iterable[tuple[str, float, float]], top: int = 12) -> KernelSummary:
    """:class:`KernelSummary` of device events ``(name, start_us, end_us)``."""
    spans = sorted((float(s), float(e), n) for n, s, e in events)
    out = KernelSummary(kernels=len(spans))
    if not spans:
        return out
    busy = 0.0
    cur_start, cur_end = spans[0][0], spans[0][1]
    per_name: dict[str, list] = {}
    for start, end, name in spans:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
        kind = kernel_kind(name)
        out.by_kind_ms[kind] = out.by_kind_ms.get(kind, 0.0) + (end - start) / 1e3
        out.by_kind_count[kind] = out.by_kind_count.get(kind, 0) + 1
        entry = per_name.setdefault(name, [name[:90], kind, 0.0, 0])
        entry[2] += (end - start) / 1e3
        entry[3] += 1
    busy += cur_end - cur_start
    out.busy_ms = busy / 1e3
    out.span_ms = (max(e for _, e, _ in spans) - spans[0][0]) / 1e3
    out.top = sorted(per_name.values(), key=lambda x: -x[2])[:top]
    return out


def profile_cuda(fn: Callable[[], object], top: int = 12) -> KernelSummary:
    """Run ``fn`` once under ``torch.profiler`` (CUDA activity only) and summarise its device events.

    Synchronises the device before and after ``fn``; raises ``RuntimeError`` when CUDA is not available."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        raise RuntimeError("profile_cuda needs a CUDA device")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [
        (e.name, e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == DeviceType.CUDA
    ]
    return summarize(events, top=top)


def format_kernel_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of ``(label, KernelSummary.as_dict())`` pairs: span, busy %, ms per kind; rows whose
    dict holds ``error`` print it."""
    head = "| row | step span ms | device busy % | idle ms | kernels | " + " | ".join(
        f"{k} ms" for k in KIND_NAMES
    )
    lines = [
        "Device kernels of one profiled step (torch.profiler, CUDA activity): busy = time any kernel ran; "
        "idle = span - busy (the device waiting for the host)",
        head + " |",
        "|---" * (5 + len(KIND_NAMES)) + "|",
    ]
    for label, k in rows:
        if k.get("error"):
            lines.append(f"| {label} | {k['error']} |" + " |" * (3 + len(KIND_NAMES)))
            continue
        busy = k["busy_ms"] / k["span_ms"] * 100 if k["span_ms"] else 0.0
        kinds = " | ".join(f"{k['by_kind_ms'].get(n, 0.0):.1f}" for n in KIND_NAMES)
        lines.append(
            f"| {label} | {k['span_ms']:.1f} | {busy:.1f} | {k['idle_ms']:.1f} | {k['kernels']} | {kinds} |"
        )
    return "\n".join(lines)
