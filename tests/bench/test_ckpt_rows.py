"""bench/gpu/speed_bench.py's ``optN-ckptK`` rows (feature cache, batch ``N``, the first ``K`` LLM decoder
layers checkpointed) and how the harness applies ``RunConfig.gradient_checkpointing`` per row, on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.harness import speed as hb
from projects.sa2va.models.checkpointing import checkpointed_layers, llm_decoder_layers
from tests.bench.test_speed_rows import load_tool

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RUN = dict(device=CPU, steps=1, warmup=0, profile_steps=1, cache_dir=None)


@pytest.fixture(scope="module")
def tool():
    return load_tool()


def test_ckpt_rows_parse(tool) -> None:
    groups = tool.parse_rows(
        "4b:opt16,opt24-ckpt12,opt32-ckpt24-all-compiled;qwen3vl4b:opt24-ckpt0", ref_batch=2
    )
    (l0, opt), (l1, c12), (l2, c24) = groups[0].rows
    assert (l0, opt.name, opt.batch_size, opt.gradient_checkpointing) == ("supervised", "opt", 16, False)
    assert (l1, c12.name, c12.batch_size, c12.cache, c12.fused_adamw, c12.compile_llm) == (
        "supervised", "opt-ckpt12", 24, "memory", True, False,
    )  # fmt: skip
    assert c12.gradient_checkpointing == 12 and not isinstance(c12.gradient_checkpointing, bool)
    assert (l2, c24.name, c24.batch_size, c24.gradient_checkpointing, c24.compile_llm) == (
        "all", "opt-ckpt24", 32, 24, True,
    )  # fmt: skip
    ((_, c0),) = groups[1].rows
    assert (c0.name, c0.gradient_checkpointing) == ("opt-ckpt0", 0)
    # the boolean rows are unchanged
    ((_, ckpt),) = tool.parse_rows("4b:ckpt", ref_batch=2)[0].rows
    assert ckpt.gradient_checkpointing is True


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("4b:opt24-ckpt37", "row 'opt24-ckpt37' in '4b:opt24-ckpt37' checkpoints 37 of 36 decoder layers"),
        ("tiny:opt2-ckpt3", "checkpoints 3 of 2 decoder layers"),
        ("4b:ref-ckpt2", "row 'ref-ckpt2'"),
        ("4b:ckpt-ckpt2", "row 'ckpt-ckpt2'"),
        ("4b:opt24-ckpt", "row 'opt24-ckpt'"),
        ("4b:opt24-compiled-ckpt2", "row 'opt24-compiled-ckpt2'"),
    ],
)
def test_bad_ckpt_rows_are_refused(tool, spec, fault) -> None:
    with pytest.raises(ValueError, match="--rows") as e:
        tool.parse_rows(spec, ref_batch=2)
    assert fault in str(e.value)


def test_run_one_applies_the_rows_checkpointing_and_the_next_row_resets_it() -> None:
    """On the tiny model (2 decoder layers): a ``ckpt1`` row runs with layer 0 checkpointed, a ``ckpt`` row
    with all of them (transformers' switch), a plain row with none; each row's losses are finite."""
    shape = hb.model_shape("tiny")
    torch.manual_seed(0)
    model = hb.build_model(shape, CPU)
    samples = hb.load_samples(shape, model.tokenizer, ROOT / "data/chase_db1", 4, 0)
    layers = llm_decoder_layers(model.mllm.base_llm())
    rows = [
        (hb.RunConfig("opt-ckpt1", 2, cache="memory", gradient_checkpointing=1), [0]),
        (hb.RunConfig("ckpt", 2, gradient_checkpointing=True), [0, 1]),
        (hb.RunConfig("opt-ckpt1", 2, cache="memory", gradient_checkpointing=1), [0]),
        (hb.RunConfig("opt", 2, cache="memory"), []),
    ]
    for cfg, want in rows:
        r = hb.run_one(model, shape, cfg, samples, **RUN)
        assert not r.error, r.error
        assert checkpointed_layers(layers) == want, cfg
        assert r.loss is not None and torch.isfinite(torch.tensor(r.loss))
