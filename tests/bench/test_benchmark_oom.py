"""bench/benchmark.py when configurations run out of memory (CPU, tiny model): the row reads
"out of memory at batch N on <device>", memory is freed, the other rows are measured and the table is
completed; the exit status is 1 only when every row failed. OOMs are injected through a fake step:
``torch.OutOfMemoryError`` (what CUDA raises) and a real failed CPU allocation."""

from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

import pytest
import torch

from bench.harness import speed as hb

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "--tiny",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--profile-steps",
    "1",
    "--num-images",
    "2",
    "--workers",
    "0",
]


def load_tool():
    spec = importlib.util.spec_from_file_location("tool_benchmark", ROOT / "bench" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(out: str) -> dict[str, str]:
    """Table rows by config name (lines starting with the model name)."""
    return {line.split()[1]: line for line in out.splitlines() if line.startswith("tiny ")}


def test_an_oom_row_is_reported_and_the_table_completed(monkeypatch, capsys) -> None:
    real_step = hb.Trainer.step
    held: list[weakref.ref] = []

    def step(self, data):
        if self.cfg.batch_size == 4:
            activations = torch.ones(4096)  # held by this frame, as a real step's activations are
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if held:
            gc.collect()
            assert held[0]() is None, "the failed configuration's tensors were not freed"
        return real_step(self, data)

    monkeypatch.setattr(hb.Trainer, "step", step)
    code = load_tool().main([*ARGS, "--configs", "ref,opt,opt-b2", "--batch-size", "4"])
    out = capsys.readouterr().out
    table = rows(out)
    assert code == 0
    assert list(table) == ["ref", "opt", "opt-b2"]
    assert table["opt"].split()[2:4] == ["4", "memory"]
    assert table["opt"].endswith("out of memory at batch 4 on cpu (warm-up)")
    for name in ("ref", "opt-b2"):
        assert float(table[name].split()[4]) > 0, table[name]  # measured samples/s
    assert "1 of 3 configuration(s) ran out of memory" in out
    assert held and held[0]() is None


def test_every_row_out_of_memory_exits_1(monkeypatch, capsys) -> None:
    def step(self, data):
        return torch.empty(2**50, dtype=torch.uint8)  # a real CPU allocation failure (1 PiB)

    monkeypatch.setattr(hb.Trainer, "step", step)
    code = load_tool().main([*ARGS, "--configs", "ref,opt-b2"])
    table = rows(capsys.readouterr().out)
    assert code == 1
    assert [line.split(None, 4)[4] for line in table.values()] == [
        "out of memory at batch 2 on cpu (warm-up)"
    ] * 2


def test_a_model_that_cannot_be_built_fills_its_rows(monkeypatch, capsys) -> None:
    def build(shape, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 60.00 GiB")

    monkeypatch.setattr(hb, "build_model", build)
    assert load_tool().main([*ARGS, "--configs", "ref,opt"]) == 1
    table = rows(capsys.readouterr().out)
    assert [line.split(None, 4)[4] for line in table.values()] == ["out of memory on cpu (building tiny)"] * 2


def test_other_errors_are_not_taken_for_oom(monkeypatch) -> None:
    def step(self, data):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(hb.Trainer, "step", step)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        load_tool().main([*ARGS, "--configs", "ref"])
    assert hb.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert not hb.is_out_of_memory(RuntimeError("CUDA error: an illegal memory access"))
