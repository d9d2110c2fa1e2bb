"""``Sa2VAModel(compile_llm=...)``: regional ``torch.compile`` of the LLM decoder layers as a product option.

The launcher tests train the tiny demo 6 iterations through ``tools/train.py`` (12 training records, batch 2,
padded lengths differing from batch to batch), once eager and once with ``--cfg-options
model.compile_llm.dynamic=True`` (inductor), the two runs side by side. ``dynamic=True`` there rather than the
default ``compile_llm=True`` (``dynamic=None``) only to keep the test under 90 s on two shared CPU cores: it
compiles one symbolic graph per attention-mask variant (a padded batch passes a mask, an unpadded one
``None``), where ``dynamic=None`` adds a static graph for the first length (each inductor graph, forward and
backward, costs 20-50 s here). The default's shape behaviour (static graph, then one dynamic graph, equal
losses) is tested in-process with the ``aot_eager`` backend, which captures the same dynamo / AOTAutograd
graphs without inductor's code generation.

Loss tolerance: both runs are fp32 on the CPU. Inductor fuses the pointwise ops of a decoder layer and
reorders the reductions of RMSNorm and softmax, so an op may round differently by a few fp32 ulp (1.2e-7
relative); AdamW (lr 1e-3) then moves the weights by up to ``lr`` per step in the directions of gradient
components that are zero up to rounding, so differences can grow with the steps. Measured over these 6
iterations: the largest relative difference of any logged loss is 7.4e-8 (``loss_lm`` at iteration 3:
6.4319725 vs 6.4319720; most values are bit-equal). The tests allow ``rtol=2e-6`` (17 to 34 fp32 ulp),
far below what a real change does: the loss moves by 0.03 to 0.2 from one step to the next here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from projects.sa2va.models.compile import (
    LLMCompileSettings,
    compile_settings,
    decoder_layers,
    dynamo_graphs,
    is_compiled,
    mask_decoder,
)
from tests.inductor import needs_inductor
from tests.tiny import DATA_ROOT, ROOT, adamw_steps, build_tiny_dataset, build_tiny_model

CONFIG = "projects/sa2va/configs/sa2va_tiny_demo.py"
RECORDS = 12
ITERS = 6  # 12 records, batch 2, 1 epoch
LOSS_KEYS = ("loss", "loss_lm", "loss_mask", "loss_dice")
RTOL = 2e-6


def _train(work: Path, ann: Path, options: list[str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "tools/train.py",
        CONFIG,
        "--work-dir",
        str(work),
        "--cfg-options",
        "train_cfg.max_epochs=1",
        f"train_dataloader.dataset.ann_file={ann}",
        "default_hooks.logger.interval=1",
        *options,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TORCHINDUCTOR_CACHE_DIR=str(work.parent / "inductor_cache"),  # cold: no graph from an earlier run
    )
    work.mkdir(parents=True)
    log = open(work.parent / f"{work.name}.log", "w")  # noqa: SIM115 (closed by the caller's wait)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: Path) -> None:
    rc = proc.wait(timeout=600)
    proc.stdout and proc.stdout.close()
    if rc != 0:
        raise AssertionError(f"{' '.join(proc.args)} exited {rc}:\n{log.read_text()[-4000:]}")


def _losses(work: Path) -> dict[str, list[float]]:
    from projects.sa2va.engine.hooks import read_loss_records

    records = read_loss_records(work / "train_losses.jsonl")
    assert sorted(records) == list(range(1, ITERS + 1)), sorted(records)
    return {k: [float(records[i][k]) for i in range(1, ITERS + 1)] for k in LOSS_KEYS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Work dirs of the eager and the compiled 6-iteration runs (run concurrently, one thread each)."""
    tmp = tmp_path_factory.mktemp("compile_runs")
    records = json.loads((DATA_ROOT / "annotations_train.json").read_text())[:RECORDS]
    ann = tmp / "ann.json"
    ann.write_text(json.dumps(records))
    work = {"eager": tmp / "eager", "compiled": tmp / "compiled"}
    procs = {
        "eager": _train(work["eager"], ann, []),
        "compiled": _train(work["compiled"], ann, ["model.compile_llm.dynamic=True"]),
    }
    for name, proc in procs.items():
        _wait(proc, tmp / f"{name}.log")
    return work


@needs_inductor
def test_launcher_compiled_run_has_the_eager_losses_over_several_lengths(runs) -> None:
    eager, compiled = _losses(runs["eager"]), _losses(runs["compiled"])
    for key in LOSS_KEYS:
        torch.testing.assert_close(compiled[key], eager[key], rtol=RTOL, atol=0, msg=key)
    log = (runs["compiled"].parent / "compiled.log").read_text()
    assert "compile_llm: 2 decoder layers compiled in place" in log
    # every graph dynamo compiled is logged with the LLM input shape that caused it
    shapes = re.findall(r"compile_llm: (\d+) graph\(s\) compiled so far .*\[B, L\] = \[(\d+), (\d+)\]", log)
    assert shapes, log[-3000:]
    counts = [int(n) for n, _, _ in shapes]
    assert counts == list(range(1, len(counts) + 1))
    # dynamic=True: one symbolic graph per attention-mask variant (padded / unpadded batch)
    assert len(counts) <= 2, shapes
    _, cfg = build_tiny_model()
    lengths = build_tiny_dataset(cfg, ann=str(runs["compiled"].parent / "ann.json")).lengths
    assert len(set(lengths)) > 1, lengths  # the batches differ in padded length
    assert "reached torch._dynamo.config.recompile_limit" not in log


def _trainable_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@needs_inductor
def test_compiled_checkpoint_has_the_eager_keys_and_loads_strictly_into_an_eager_model(runs) -> None:
    eager = _trainable_state(runs["eager"] / f"iter_{ITERS}.pth")
    compiled = _trainable_state(runs["compiled"] / f"iter_{ITERS}.pth")
    assert list(compiled) == list(eager)
    assert not any("_orig_mod" in k for k in compiled)
    for k, v in eager.items():
        assert compiled[k].shape == v.shape and compiled[k].dtype == v.dtype, k
    model, _ = build_tiny_model()  # eager
    model.load_state_dict(compiled, strict=True)
    for k, v in compiled.items():
        assert torch.equal(model.state_dict()[k], v), k
    # and a compiled model loads the eager checkpoint strictly
    compiled_model, _ = build_tiny_model(compile_llm=dict(backend="eager"))
    compiled_model.load_state_dict(eager, strict=True)
    assert list(compiled_model.state_dict()) == list(model.state_dict())


@needs_inductor
def test_export_of_the_compiled_run_equals_the_eager_config_export(runs, tmp_path) -> None:
    """``tools/convert_to_hf.py`` with the compiled run's saved config (``compile_llm`` in it) exports the
    same tensors as with the eager config, from the same checkpoint."""
    from safetensors.torch import load_file

    from projects.sa2va.checkpoint.hf_sa2va import hf_weight_files

    ckpt = runs["compiled"] / f"iter_{ITERS}.pth"
    saved_cfg = runs["compiled"] / "sa2va_tiny_demo.py"
    assert "compile_llm" in saved_cfg.read_text()
    out = {}
    for name, cfg in (("compiled", saved_cfg), ("eager", ROOT / CONFIG)):
        out[name] = tmp_path / name
        cmd = [sys.executable, "tools/convert_to_hf.py", str(cfg), str(ckpt), "--save-path", str(out[name])]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tensors = {}
    for name, folder in out.items():
        tensors[name] = {}
        for shard in hf_weight_files(folder):
            tensors[name].update(load_file(str(shard)))
    assert tensors["compiled"].keys() == tensors["eager"].keys()
    for k, v in tensors["eager"].items():
        assert torch.equal(tensors["compiled"][k], v), k


# --- in-process -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with empty dynamo caches: the layers of all models share one code object
    (``nn.Module._call_impl``), whose graphs count against one ``recompile_limit``."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _steps(model, dataset, batches: list[list[int]]) -> tuple[list[int], list[float]]:
    """:func:`tests.tiny.adamw_steps`; returns the padded lengths and the total losses."""
    done, losses = adamw_steps(model, dataset, batches)
    return [int(b.input_ids.shape[1]) for b in done], losses


# Three padded batches of three different lengths (192, 205, 206 tokens with the tiny tokenizer).
BATCHES = [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_default_dynamic_shapes_two_lengths_one_recompile_and_eager_losses(gradient_checkpointing) -> None:
    """``compile_llm=True``'s shape policy (``dynamic=None``): the first length compiles a static graph,
    the second one graph with a symbolic length, which the third reuses; losses equal eager ones (aot_eager
    computes what eager does, op by op). Gradient checkpointing (recomputing the compiled layer in
    backward) works with it."""
    eager, cfg = build_tiny_model()
    dataset = build_tiny_dataset(cfg)
    if gradient_checkpointing:
        eager.mllm.enable_gradient_checkpointing()
    lengths, want = _steps(eager, dataset, BATCHES)
    assert len(set(lengths)) == 3, lengths
    compiled, _ = build_tiny_model(compile_llm=dict(backend="aot_eager"))
    if gradient_checkpointing:
        compiled.mllm.enable_gradient_checkpointing()
    assert all(is_compiled(layer) for layer in decoder_layers(compiled.mllm.base_llm()))
    torch._dynamo.reset()
    before = dynamo_graphs()
    got_lengths, got = _steps(compiled, dataset, BATCHES)
    assert got_lengths == lengths
    assert dynamo_graphs() - before == 2  # static for the first length, symbolic for the others
    assert compiled._compiled_graphs.graphs == 2
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_eval_runs_eager_and_train_compiles_again_keys_unchanged() -> None:
    eager, _ = build_tiny_model()
    model, _ = build_tiny_model(compile_llm=dict(backend="eager"))
    layers = decoder_layers(model.mllm.base_llm())
    assert all(is_compiled(layer) for layer in layers)
    assert list(model.state_dict()) == list(eager.state_dict())
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in eager.named_parameters()]
    model.eval()
    assert not any(is_compiled(layer) for layer in layers)
    model.train()
    assert all(is_compiled(layer) for layer in layers)
    assert not any(is_compiled(layer) for layer in decoder_layers(eager.mllm.base_llm()))


def test_train_again_keeps_the_compiled_wrappers() -> None:
    """``train()`` on a model in training mode compiles nothing again: ``nn.Module.compile`` would build a
    new ``torch.compile`` wrapper per module each time (``model.train()`` took 69.9 ms instead of 10.7 ms
    per Sa2VA-4B iteration when mmengine's loop called it every iteration, bench/records/speed_s11)."""
    model, _ = build_tiny_model(compile_llm=dict(backend="eager"), compile_decoder=dict(backend="eager"))
    modules = [*decoder_layers(model.mllm.base_llm()), mask_decoder(model)]
    wrappers = [m._compiled_call_impl for m in modules]
    calls = []
    real = torch.compile
    with mock.patch.object(torch, "compile", lambda *a, **k: calls.append(1) or real(*a, **k)):
        model.train()
        model.train(True)
        assert calls == []
        assert [m._compiled_call_impl for m in modules] == wrappers
        model.eval()
        model.train()  # eager in between: compiled again, once per module
    assert len(calls) == len(modules)
    assert all(is_compiled(m) for m in modules)


def test_compile_option_values() -> None:
    assert compile_settings(False) is None and compile_settings(None) is None
    assert compile_settings(True) == LLMCompileSettings(dynamic=None, backend="inductor")
    assert compile_settings({"dynamic": False}).dynamic is False
    with pytest.raises(ValueError, match=r"unknown keys \['dynamc'\]"):
        compile_settings({"dynamc": True})
    with pytest.raises(ValueError, match="backend must be one of"):
        compile_settings({"backend": "tensorrt"})
    with pytest.raises(ValueError, match="recompile_limit must be a positive int"):
        compile_settings({"recompile_limit": 0})
    with pytest.raises(TypeError, match="compile_llm must be a bool"):
        compile_settings("yes")
    with pytest.raises(ValueError, match="dynamic must be None, True or False"):
        build_tiny_model(compile_llm={"dynamic": "auto"})


def test_internlm2_decoder_layers_compile_with_lora_over_two_lengths() -> None:
    """The InternLM2 family (own decoder code, boolean mask always passed): LoRA-wrapped layers compiled in
    place give the eager logits and gradients for two sequence lengths in a row (``aot_eager``)."""
    from peft import LoraConfig, get_peft_model

    from projects.sa2va.models.compile import compile_layers, restore_eager
    from projects.sa2va.models.internlm2 import InternLM2Config, InternLM2ForCausalLM

    torch.manual_seed(0)
    dims = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    lm = InternLM2ForCausalLM(InternLM2Config(**dims, num_attention_heads=4, num_key_value_heads=2))
    targets = ["wqkv", "wo", "w1", "w2", "w3"]
    # trained embedding / head copies, as Sa2VA's train_embeddings=True: the first layer's input requires
    # grad like the others', so all layers share one graph per shape
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        modules_to_save=["tok_embeddings", "output"],
        init_lora_weights=False,
    )
    lm = get_peft_model(lm, cfg)
    lm.train()
    keys = list(lm.state_dict())
    layers = decoder_layers(lm.get_base_model())

    def step(length: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ids = torch.arange(2 * length).reshape(2, length) % 100
        mask = torch.ones_like(ids)
        mask[1, : length // 3] = 0  # left padding
        lm.zero_grad(set_to_none=True)
        logits = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits.float().square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in lm.parameters() if p.requires_grad]

    want = [step(n) for n in (17, 23)]
    torch._dynamo.reset()
    before = dynamo_graphs()
    compile_layers(layers, LLMCompileSettings(backend="aot_eager"))
    try:
        got = [step(n) for n in (17, 23)]
        assert dynamo_graphs() - before == 2  # static 17, then symbolic in the length
    finally:
        restore_eager(layers)
    assert list(lm.state_dict()) == keys
    for (gl, gg), (wl, wg) in zip(got, want):
        torch.testing.assert_close(gl, wl, rtol=1e-5, atol=1e-6)
        for a, b in zip(gg, wg):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config", ["sa2va_tiny_qwen3vl_demo", "sa2va_tiny_qwen2_5vl_demo"])
def test_qwen_vl_families_compile_over_three_lengths_with_eager_losses(config) -> None:
    """The Qwen-VL text decoders (multimodal rotary positions; Qwen3-VL adds its deepstack features outside
    the layers): compiled layers (``aot_eager``, default shape policy) give the eager losses over three
    padded lengths, keys unchanged."""
    from mmengine.config import Config
    from xtuner.registry import BUILDER

    from projects.sa2va.configs import config_path
    from projects.sa2va.models.builder import build_component

    cfg = Config.fromfile(str(config_path(config)))
    ds_cfg = dict(cfg.train_dataloader.dataset)
    ds_cfg.update(ann_file=str(DATA_ROOT / "annotations_train.json"), image_root=str(DATA_ROOT / "images"))
    dataset = build_component(ds_cfg)

    def build(**overrides):
        model_cfg = cfg.model.copy()
        model_cfg.update(overrides)
        torch.manual_seed(0)
        return BUILDER.build(model_cfg)

    eager = build()
    lengths, want = _steps(eager, dataset, BATCHES)
    assert len(set(lengths)) == 3, lengths
    compiled = build(compile_llm=dict(backend="aot_eager"))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    got_lengths, got = _steps(compiled, dataset, BATCHES)
    assert got_lengths == lengths
    assert 1 <= compiled._compiled_graphs.graphs <= 3
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_ddp_two_ranks_compiled_run_has_the_eager_losses(tmp_path) -> None:
    """Two CPU ranks (``tools/dist.sh``, gloo): DDP around a model whose layers are compiled in place
    (``aot_eager``) logs the losses of the eager two-rank run (12 records, 2 ranks x batch 2: 3 steps)."""
    records = json.loads((DATA_ROOT / "annotations_train.json").read_text())[:RECORDS]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    losses = {}
    runs = (("eager", 29641, []), ("compiled", 29642, ["model.compile_llm.backend=aot_eager"]))
    for name, port, extra in runs:
        work = tmp_path / name
        cmd = ["bash", "tools/dist.sh", "train", CONFIG, "2", "--work-dir", str(work), "--cfg-options"]
        cmd += ["train_cfg.max_epochs=1", f"train_dataloader.dataset.ann_file={ann}", *extra]
        res = subprocess.run(
            cmd, cwd=ROOT, env=dict(env, PORT=str(port)), capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        from projects.sa2va.engine.hooks import read_loss_records

        records_by_iter = read_loss_records(work / "train_losses.jsonl")
        assert sorted(records_by_iter) == [1, 2, 3]
        losses[name] = [float(records_by_iter[i][k]) for i in (1, 2, 3) for k in LOSS_KEYS]
        if extra:
            assert "compile_llm: 2 decoder layers compiled in place" in res.stdout + res.stderr
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=RTOL, atol=0)
