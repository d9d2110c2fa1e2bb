"""Regional ``torch.compile`` of the LLM in the speed harness (``RunConfig.compile_llm``), on the CPU with the
tiny model: the compiled step computes what the eager step computes, each decoder layer reuses one compiled
graph, and the harness restores the eager layers after the row.

Tolerance: both paths run in fp32 on the CPU. Inductor fuses the pointwise ops of a decoder layer and
reorders the reductions of RMSNorm and softmax, so each op may round differently by a few fp32 ulp
(``eps = 1.2e-7``). Measured here: equal losses over 3 steps, first-step gradients within 1e-7 of each
other relative to the norm of all gradients (8.5e-8), the largest entry difference 1.1e-7 of the largest
gradient. So the losses are compared at ``rtol=1e-5``, all gradients together at a relative norm of 1e-6,
and each tensor at ``rtol=1e-4`` with an ``atol`` of 1e-6 of the largest gradient: some gradients are zero
up to rounding (the key biases of the SAM2 decoder's attention, ~1e-10, to which softmax is invariant) and
have no relative precision. LoRA dropout is 0 here: inductor draws its own random numbers, so dropout masks
would differ; the mask loss samples points at random, so every step is seeded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.harness import speed as hb
from tests.inductor import needs_inductor

ROOT = Path(__file__).resolve().parents[2]
NO_DROPOUT = {"dropout": 0.0}


pytestmark = needs_inductor


@pytest.fixture(scope="module")
def tiny():
    """The tiny model (LoRA dropout 0), its initial state and two samples (one batch of one padded length)."""
    shape = hb.model_shape("tiny")
    torch.manual_seed(0)
    model = hb.build_model(shape, torch.device("cpu"), lora=NO_DROPOUT)
    samples = hb.load_samples(shape, model.tokenizer, ROOT / "data/chase_db1", 2, 0)
    state = {k: v.detach().clone() for k, v in torch.nn.Module.state_dict(model).items()}
    return shape, model, samples, state


def restore(model: torch.nn.Module, state: dict) -> None:
    torch.nn.Module.load_state_dict(model, state)
    model.zero_grad(set_to_none=True)


def recorded_row(monkeypatch, model, shape, samples, cfg) -> tuple[hb.Result, list[float], dict]:
    """``run_one`` of ``cfg`` with the losses of every ``Trainer.step`` and the gradients of the first
    optimiser step recorded (warm-up 3 steps, 1 timed, 1 profiling step)."""
    losses: list[float] = []
    grads: dict[str, torch.Tensor] = {}
    real_step, real_opt = hb.Trainer.step, hb.Trainer.optimizer_step

    def step(self, data):
        loss = real_step(self, data)
        losses.append(float(loss))
        return loss

    def optimizer_step(self):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        real_opt(self)

    monkeypatch.setattr(hb.Trainer, "step", step)
    monkeypatch.setattr(hb.Trainer, "optimizer_step", optimizer_step)
    torch.manual_seed(0)  # the mask loss samples points at random: both rows draw the same ones
    res = hb.run_one(
        model,
        shape,
        cfg,
        samples,
        device=torch.device("cpu"),
        steps=1,
        warmup=2,
        profile_steps=1,
        cache_dir=None,
    )
    monkeypatch.undo()
    return res, losses, grads


def test_compile_llm_row_trains_like_the_eager_row(tiny, monkeypatch) -> None:
    shape, model, samples, state = tiny
    eager_cfg = hb.RunConfig("opt", 2, cache="memory", lora=NO_DROPOUT)
    compiled_cfg = hb.RunConfig("opt-c", 2, cache="memory", compile_llm=True, lora=NO_DROPOUT)
    restore(model, state)
    eager, eager_losses, eager_grads = recorded_row(monkeypatch, model, shape, samples, eager_cfg)
    restore(model, state)
    compiled, compiled_losses, compiled_grads = recorded_row(monkeypatch, model, shape, samples, compiled_cfg)
    assert not eager.error and not compiled.error
    assert (eager.compiled_layers, eager.compiled_graphs) == (0, 0)
    # 2 decoder layers, one graph for both over the warm-up, timed, profiling (staged) and FLOP passes
    assert (
        (compiled.compiled_layers, compiled.compiled_graphs)
        == (shape.llm_config["num_hidden_layers"], 1)
        == (2, 1)
    )
    assert all(layer._compiled_call_impl is None for layer in model.mllm.base_llm().model.layers)
    assert len(compiled_losses) == len(eager_losses) == 4
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0)
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-5)
    assert set(compiled_grads) == set(eager_grads)
    assert any("lora_" in n for n in eager_grads), "no LoRA gradients: the layers did not train"
    flat_e = torch.cat([g.flatten() for g in eager_grads.values()])
    flat_c = torch.cat([compiled_grads[n].flatten() for n in eager_grads])
    assert float((flat_c - flat_e).norm() / flat_e.norm()) < 1e-6
    atol = 1e-6 * float(flat_e.abs().max())
    for name, g in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], g, rtol=1e-4, atol=atol, msg=name)
    assert compiled.samples_per_s > 0 and compiled.first_step_s > 0
    print(
        f"first step: eager {eager.first_step_s:.1f} s, compiled {compiled.first_step_s:.1f} s (with compile)"
    )
