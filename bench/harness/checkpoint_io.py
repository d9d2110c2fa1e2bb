"""Checkpoint I/O benchmark: write a random-weight official folder, load it, export it; time and memory.

Presets: ``4b`` (Sa2VA-4B shapes: InternViT-300M, Qwen2.5-3B, SAM2 Hiera-L; bf16) and ``tiny`` (the
CPU smoke test). Peak host RSS comes from ``resource.getrusage`` (process-wide peak, so it only grows
phase by phase); peak GPU memory from ``torch.cuda.max_memory_allocated`` (reset per phase).
"""

from __future__ import annotations

import gc
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader, export_hf_folder, hf_weight_files
from projects.sa2va.models.internvl import Qwen2InternVL
from projects.sa2va.models.sa2va import Sa2VAModel
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from projects.sa2va.models.tokenizer import build_tiny_tokenizer

from .presets import BENCH_VOCAB_SIZE, load_preset

__all__ = ["PRESETS", "BenchRow", "format_table", "run_checkpoint_bench"]

#: Run settings per preset; the model shapes are read from the ``_base_`` config of the same name
#: (:func:`load_preset`), with ``llm_overrides`` on top.
PRESETS: dict[str, dict[str, Any]] = {
    "4b": dict(
        llm_overrides=dict(vocab_size=BENCH_VOCAB_SIZE),
        dtype=torch.bfloat16,
        max_shard_size="5GB",
    ),
    "tiny": dict(llm_overrides={}, dtype=torch.bfloat16, max_shard_size="1MB"),
}


def _preset(name: str) -> dict[str, Any]:
    """``PRESETS[name]`` plus the shapes of :func:`load_preset` (vision, llm, sam2_overrides, lora_r)."""
    shapes = load_preset(name)
    run = PRESETS[name]
    return dict(
        run,
        vision=shapes["vision_config"],
        llm={**shapes["llm_config"], **run["llm_overrides"]},
        sam2_overrides=shapes["sam2_overrides"],
        lora_r=shapes["lora_r"],
    )


@dataclass
class BenchRow:
    """One phase: wall seconds, peak host RSS so far (GiB), peak GPU memory in the phase (GiB)."""

    phase: str
    seconds: float
    peak_rss_gib: float
    peak_gpu_gib: float
    note: str = ""


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _build(preset: dict[str, Any], device: torch.device, load_from: Path | None, lora: bool) -> Sa2VAModel:
    mllm = dict(
        type=Qwen2InternVL,
        tokenizer=dict(type=build_tiny_tokenizer),
        vision_config=preset["vision"],
        llm_config=preset["llm"],
        torch_dtype=preset["dtype"],
    )
    sam2 = dict(
        type=SAM2GroundingEncoder, config_name="sam2_hiera_l.yaml", overrides=preset["sam2_overrides"]
    )
    with torch.device(device):
        model = Sa2VAModel(
            mllm=mllm,
            grounding_encoder=sam2,
            trainable=dict(llm="lora" if lora else "frozen"),
            lora=dict(r=preset["lora_r"], alpha=2 * preset["lora_r"], dropout=0.0, train_embeddings=True),
            load_weights=HFSa2VALoader(str(load_from)) if load_from is not None else None,
        )
    if load_from is None:  # a folder of bf16 weights, as released
        model.grounding_encoder.to(preset["dtype"])
        model.text_hidden_fcs.to(preset["dtype"])
        model.mllm.mlp1.to(preset["dtype"])
    return model.eval()


class _Phase:
    def __init__(self, rows: list[BenchRow], name: str, device: torch.device) -> None:
        self.rows, self.name, self.device, self.note = rows, name, device, ""

    def __enter__(self) -> _Phase:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0
        self.rows.append(BenchRow(self.name, time.perf_counter() - self.t0, _peak_rss_gib(), gpu, self.note))


def run_checkpoint_bench(preset_name: str, workdir: str | Path, device: str = "cpu") -> list[BenchRow]:
    """Write ``workdir/source`` (random folder), load it into a LoRA model, export to ``workdir/export``.

    Raises ``AssertionError``-free ``RuntimeError`` if the export's key set differs from the source's.
    """
    preset = _preset(preset_name)
    dev = torch.device(device)
    workdir = Path(workdir)
    src, out = workdir / "source", workdir / "export"
    rows: list[BenchRow] = []
    with _Phase(rows, "build random model", dev):
        model = _build(preset, dev, None, lora=False)
    n_params = sum(p.numel() for p in model.parameters())
    with _Phase(rows, "write source folder", dev) as ph:
        rep = export_hf_folder(model, src, max_shard_size=preset["max_shard_size"], dtype=preset["dtype"])
        ph.note = (
            f"{n_params / 1e9:.2f} B params, {rep.total_bytes / 2**30:.2f} GiB, {len(rep.shards)} shards"
        )
    del model
    gc.collect()
    with _Phase(rows, "build + load (HFSa2VALoader)", dev) as ph:
        model = _build(preset, dev, src, lora=True)
        ph.note = f"LoRA r={preset['lora_r']} applied after load"
    with torch.no_grad():  # stand-in for training: non-zero LoRA B so the merge does work
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    with _Phase(rows, "export merged (convert_to_hf)", dev) as ph:
        rep2 = export_hf_folder(model, out, max_shard_size=preset["max_shard_size"], dtype=preset["dtype"])
        ph.note = f"{rep2.num_tensors} tensors, {len(rep2.shards)} shards"
    src_keys = {k for keys in hf_weight_files(src).values() for k in (keys or [])}
    out_keys = {k for keys in hf_weight_files(out).values() for k in (keys or [])}
    if src_keys != out_keys:
        raise RuntimeError(f"export keys differ from source: {sorted(src_keys ^ out_keys)[:10]}")
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """Plain-text table of :class:`BenchRow`."""
    head = f"{'phase':<32}{'seconds':>10}{'peak RSS GiB':>15}{'peak GPU GiB':>15}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.phase:<32}{r.seconds:>10.2f}{r.peak_rss_gib:>15.2f}{r.peak_gpu_gib:>15.2f}  {r.note}"
        )
    return "\n".join(lines)
