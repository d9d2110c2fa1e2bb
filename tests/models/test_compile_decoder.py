"""``Sa2VAModel(compile_decoder=...)``: the SAM2 mask decoder compiled in place, on the tiny model (CPU).

Three AdamW steps over batches of 10, 5 and 10 objects (dataset records [0, 1], [2], [3, 4]: 5 masks each):
the default shape policy (``dynamic=None``) compiles a static graph for 10 objects, then one symbolic in the
object count that serves 5 and 10 again. ``aot_eager`` runs the captured graphs op by op, so the losses are
the eager ones bit for bit; inductor's generated code is checked with ``dynamic=True`` (one symbolic graph:
each inductor compilation of the decoder costs about 40 s on two CPU cores).
"""

from __future__ import annotations

import pytest
import torch

from projects.sa2va.models.compile import (
    compile_settings,
    decoder_layers,
    dynamo_graphs,
    is_compiled,
    mask_decoder,
)
from tests.inductor import needs_inductor
from tests.tiny import adamw_steps, build_tiny_dataset, build_tiny_model

BATCHES = [[0, 1], [2], [3, 4]]
RTOL = 2e-6  # as tests/models/test_compile_option.py: a few fp32 ulp of reordered reductions


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _steps(model, dataset) -> tuple[list[int], list[float]]:
    """:func:`tests.tiny.adamw_steps` over :data:`BATCHES`; the objects of each batch and its total loss."""
    done, losses = adamw_steps(model, dataset, BATCHES)
    return [sum(m.shape[0] for m in b.masks) for b in done], losses


@pytest.fixture(scope="module")
def eager_run():
    torch._dynamo.reset()
    model, cfg = build_tiny_model()
    dataset = build_tiny_dataset(cfg)
    return dataset, _steps(model, dataset)


def test_default_policy_two_graphs_and_the_eager_losses(eager_run) -> None:
    dataset, (objects, want) = eager_run
    assert objects == [10, 5, 10]
    model, _ = build_tiny_model(compile_decoder=dict(backend="aot_eager"))
    assert is_compiled(mask_decoder(model))
    assert not any(is_compiled(layer) for layer in decoder_layers(model.mllm.base_llm()))  # LLM eager
    before = dynamo_graphs()
    got_objects, got = _steps(model, dataset)
    assert got_objects == objects
    assert dynamo_graphs() - before == 2  # static for 10 objects, symbolic for 5 (then reused for 10)
    assert model._compiled_graphs.graphs == 2 and model._compiled_graphs.option == "compile_decoder"
    assert got == want


@needs_inductor
def test_inductor_code_gives_the_eager_losses(eager_run) -> None:
    dataset, (_, want) = eager_run
    model, _ = build_tiny_model(compile_decoder=dict(dynamic=True))
    before = dynamo_graphs()
    _, got = _steps(model, dataset)
    assert dynamo_graphs() - before == 1
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_with_compile_llm_both_regions_compile_and_eval_restores_eager() -> None:
    eager, _ = build_tiny_model()
    model, _ = build_tiny_model(compile_llm=dict(backend="eager"), compile_decoder=dict(backend="eager"))
    layers, decoder = decoder_layers(model.mllm.base_llm()), mask_decoder(model)
    assert is_compiled(decoder) and all(is_compiled(layer) for layer in layers)
    assert model._compiled_graphs.option == "compile_llm"
    assert list(model.state_dict()) == list(eager.state_dict())
    model.eval()
    assert not is_compiled(decoder) and not any(is_compiled(layer) for layer in layers)
    model.train()
    assert is_compiled(decoder) and all(is_compiled(layer) for layer in layers)


def test_bad_values_name_the_option() -> None:
    assert compile_settings(True, "compile_decoder").dynamic is None
    with pytest.raises(ValueError, match=r"^compile_decoder: unknown keys \['dynamc'\]"):
        build_tiny_model(compile_decoder={"dynamc": True})
    with pytest.raises(ValueError, match=r"^compile_decoder: backend must be one of"):
        build_tiny_model(compile_decoder={"backend": "tensorrt"})
    with pytest.raises(TypeError, match="compile_decoder must be a bool"):
        build_tiny_model(compile_decoder="yes")
    with pytest.raises(ValueError, match=r"^compile_llm: dynamic must be None, True or False"):
        build_tiny_model(compile_llm={"dynamic": "auto"})
