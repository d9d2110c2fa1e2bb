"""bench/gpu/speed_bench.py's row plan (``--rows``) and the harness's per-row LoRA overrides, padding
fraction and logit sizes, on the CPU with the tiny model."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from bench.harness import speed as hb

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RUN = dict(device=CPU, steps=1, warmup=0, profile_steps=1, cache_dir=None)


def load_tool():
    spec = importlib.util.spec_from_file_location("tool_speed_bench", ROOT / "bench/gpu/speed_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return load_tool()


@pytest.fixture(scope="module")
def samples():
    shape = hb.model_shape("tiny")
    return hb.load_samples(shape, hb.build_model(shape, CPU).tokenizer, ROOT / "data/chase_db1", 4, 0)


# --- the plan --------------------------------------------------------------------------------------
def test_rows_spec_groups_overrides_and_rows(tool) -> None:
    groups = tool.parse_rows(
        "1b:opt32,opt32-compiled; 4b[train_embeddings=new_tokens,keep_originals=True,r=64]:ref,ckpt-fused,"
        "opt24-all;4b[train_embeddings=False]:ckpt",
        ref_batch=2,
    )
    assert [(g.model, g.lora) for g in groups] == [
        ("1b", {}),
        ("4b", {"train_embeddings": "new_tokens", "keep_originals": True, "r": 64}),
        ("4b", {"train_embeddings": False}),
    ]
    (l0, c0), (l1, c1) = groups[0].rows
    assert (l0, c0.name, c0.batch_size, c0.cache, c0.fused_adamw, c0.compile_llm) == (
        "supervised", "opt", 32, "memory", True, False,
    )  # fmt: skip
    assert (l1, c1.batch_size, c1.compile_llm) == ("supervised", 32, True)
    ref, ckpt_fused, opt_all = groups[1].rows
    assert (ref[1].name, ref[1].batch_size, ref[1].cache) == ("ref", 2, "off")
    assert ckpt_fused[1].gradient_checkpointing and ckpt_fused[1].fused_adamw
    assert opt_all[0] == "all" and opt_all[1].batch_size == 24
    assert all(dict(c.lora) == groups[1].lora for _, c in groups[1].rows)
    (_, ckpt), = groups[2].rows  # fmt: skip
    assert (
        ckpt.gradient_checkpointing
        and not ckpt.fused_adamw
        and dict(ckpt.lora) == {"train_embeddings": False}
    )


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("7b:ref", "'7b:ref'"),
        ("4b:ref,opt", "row 'opt'"),
        ("4b:ref,opt16-fast", "row 'opt16-fast'"),
        ("4b[train_embeddings]:ref", "LoRA override 'train_embeddings'"),
        ("4b", "'4b'"),
        (" ; ", "no groups"),
    ],
)
def test_a_bad_rows_spec_is_refused_naming_the_part(tool, spec, fault) -> None:
    with pytest.raises(ValueError, match="--rows") as e:
        tool.parse_rows(spec, ref_batch=2)
    assert fault in str(e.value)


def test_without_rows_the_plan_is_the_old_one(tool) -> None:
    args = tool.parse_args(["--models", "4b,1b", "--opt-batches", "4b:16,24;1b:32"])
    assert tool.legacy_rows(args) == (
        "4b:ref-all,ref,ckpt,ckpt-fused,opt16-all,opt16,opt24;1b:ref-all,ref,ckpt,ckpt-fused,opt32-all,opt32"
    )
    args = tool.parse_args(["--tiny", "--opt-batches", "tiny:2", "--baseline", "", "--no-ckpt"])
    assert tool.legacy_rows(args) == "tiny:ref,opt2"


# --- LoRA overrides through the harness ------------------------------------------------------------
def test_lora_overrides_reach_the_model_and_a_mismatched_row_is_refused(samples) -> None:
    shape = hb.model_shape("tiny")
    torch.manual_seed(0)
    frozen = hb.build_model(shape, CPU, lora={"train_embeddings": False})
    torch.manual_seed(0)
    full = hb.build_model(shape, CPU)
    assert frozen.lora_cfg["train_embeddings"] is False and full.lora_cfg["train_embeddings"] is True
    trained = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert not any("embed_tokens" in n or "lm_head" in n for n in trained)
    assert any("embed_tokens" in n for n, p in full.named_parameters() if p.requires_grad)
    assert any(".lora_A." in n for n in trained)
    with pytest.raises(ValueError, match=r"train_embeddings: built False, row wants True"):
        hb.run_one(frozen, shape, hb.RunConfig("ref", 2), samples, **RUN)
    r = hb.run_one(frozen, shape, hb.RunConfig("ref", 2, lora={"train_embeddings": False}), samples, **RUN)
    assert not r.error and r.samples_per_s > 0 and r.loss == r.loss
    assert all(p.grad is None for p in frozen.parameters())  # run_one cleans up


def test_new_tokens_row_trains_only_the_added_rows(samples) -> None:
    from projects.sa2va.models import mllm

    if "new_tokens" not in getattr(mllm, "TRAIN_EMBEDDINGS_MODES", ()):
        pytest.skip("this model code has no train_embeddings='new_tokens' (MLLMAdapter.apply_lora)")
    shape = hb.model_shape("tiny")
    torch.manual_seed(0)
    lowmem = hb.build_model(shape, CPU, lora={"train_embeddings": "new_tokens"})
    torch.manual_seed(0)
    full = hb.build_model(shape, CPU)
    n_low = sum(p.numel() for p in lowmem.parameters() if p.requires_grad)
    n_full = sum(p.numel() for p in full.parameters() if p.requires_grad)
    vocab, hidden = full.mllm.base_llm().get_output_embeddings().weight.shape
    assert n_full - n_low >= 2 * (vocab - len(lowmem.mllm.new_token_ids())) * hidden
    cfg = hb.RunConfig(
        "ckpt-fused",
        2,
        gradient_checkpointing=True,
        fused_adamw=True,
        lora={"train_embeddings": "new_tokens"},
    )
    r = hb.run_one(lowmem, shape, cfg, samples, **RUN)
    assert not r.error and r.samples_per_s > 0


# --- padding and logit sizes -----------------------------------------------------------------------
def test_padding_fraction_and_logit_bytes_count_the_batch(samples) -> None:
    batch = hb.make_batches(samples, 4, 1, pin=False)[0]
    data = batch["data"]
    b, length = data.input_ids.shape
    real = int(data.attention_mask.sum())
    assert 0 < real < b * length, "the 4 samples have different lengths: the batch is padded"
    assert hb.padding_fraction(batch) == pytest.approx((b * length - real) / (b * length))
    n_sup = sum(int((data.labels[i, 1:] != -100).sum()) for i in range(b))
    assert hb.logit_bytes(batch, 1000) == (n_sup * 1000 * 4, b * length * 1000 * 4)
    shape = hb.model_shape("tiny")
    torch.manual_seed(0)
    model = hb.build_model(shape, CPU)
    vocab = model.mllm.base_llm().get_output_embeddings().weight.shape[0]
    r = hb.run_one(model, shape, hb.RunConfig("opt", 4, cache="memory"), samples, **RUN)
    assert r.pad_frac == pytest.approx(hb.padding_fraction(batch))
    assert r.sup_logits_gib == pytest.approx(n_sup * vocab * 4 / 2**30)
    assert r.all_logits_gib == pytest.approx(b * length * vocab * 4 / 2**30)


# --- the tool end to end ---------------------------------------------------------------------------
def test_tool_rows_build_failures_search_stop_and_budget(tool, tmp_path, monkeypatch, capsys) -> None:
    real_run_one = hb.run_one

    def run_one(model, shape, cfg, samples, **kw):
        if cfg.cache != "off" and cfg.batch_size >= 4:  # as if batch 4 did not fit
            return hb.Result(shape.name, cfg, error=hb.oom_message(CPU, cfg.batch_size, "warm-up"))
        return real_run_one(model, shape, cfg, samples, **kw)

    monkeypatch.setattr(hb, "run_one", run_one)
    out = tmp_path / "rows.jsonl"
    rows = "tiny:ref,opt2-all,opt4,opt8,opt8-all;tiny[no_such_key=1]:ref;tiny[train_embeddings=False]:opt2"
    args = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1", "--num-images", "4"]
    code = tool.main([*args, "--workers", "0", "--rows", rows, "--out", str(out)])
    assert code == 1  # a group's model could not be built
    got = [json.loads(line) for line in out.read_text().splitlines()]
    summary = [(r["lora"], r["lm_logits"], r["config"], r["batch"], r["error"].split(":")[0]) for r in got]
    assert summary == [
        ({}, "supervised", "ref", 2, ""),
        ({}, "all", "opt", 2, ""),
        ({}, "supervised", "opt", 4, "out of memory at batch 4 on cpu (warm-up)"),
        ({}, "supervised", "opt", 8, "not run"),  # the search stopped at batch 4
        ({}, "all", "opt", 8, "out of memory at batch 8 on cpu (warm-up)"),  # another LM head: tried
        ({"no_such_key": 1}, "supervised", "ref", 2, "build failed"),
        ({"train_embeddings": False}, "supervised", "opt", 2, ""),
    ]
    assert "no_such_key" in got[5]["error"]
    ok = got[0]
    assert 0 < ok["pad_frac"] < 1 and 0 < ok["sup_logits_gib"] < ok["all_logits_gib"]
    table = capsys.readouterr().out
    assert "| pad % | sup. logits MiB | all logits MiB |" in table
    assert "| tiny | train_embeddings=False | supervised | opt |" in table
    # a budget already spent: nothing runs, every row says why
    code = tool.main(
        [*args, "--workers", "0", "--rows", "tiny:ref,opt2", "--budget-s", "0", "--out", str(out)]
    )
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and [r["error"] for r in got] == ["not run: past --budget-s 0 s"] * 2


def test_a_failed_compilation_is_a_row_and_the_others_run(tool, tmp_path, monkeypatch) -> None:
    def no_compiler(model, *, dynamic):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(hb, "compiled_decoder_layers", no_compiler)
    out = tmp_path / "rows.jsonl"
    args = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1", "--num-images", "2"]
    code = tool.main([*args, "--workers", "0", "--rows", "tiny:opt2-compiled,opt2", "--out", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1
    assert got[0]["compile_llm"] and got[0]["error"] == (
        "compile failed: RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    )
    assert not got[1]["compile_llm"] and not got[1]["error"] and got[1]["samples_per_s"] > 0


def test_cdec_rows_compile_the_mask_decoder_and_say_so(tool, tmp_path, monkeypatch) -> None:
    from projects.sa2va.models.compile import is_compiled, mask_decoder, restore_eager

    (group,) = tool.parse_rows("tiny:opt2-cdec,opt2-compiled-cdec,opt2-compiled", ref_batch=2)
    assert [(c.compile_llm, c.compile_decoder) for _, c in group.rows] == [
        (False, True), (True, True), (True, False),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="-cdec"):
        tool.parse_rows("tiny:opt2-cdec-compiled", ref_batch=2)  # the suffixes' order is fixed
    seen = []

    @contextlib.contextmanager
    def aot_eager_decoder(model, *, dynamic):  # the harness's context, with a backend that is fast on a CPU
        decoder = mask_decoder(model)
        seen.append((dynamic, is_compiled(decoder)))
        decoder.compile(backend="aot_eager", dynamic=dynamic)
        try:
            yield 1
        finally:
            restore_eager([decoder])
            torch._dynamo.reset()

    monkeypatch.setattr(hb, "compiled_mask_decoder", aot_eager_decoder)
    out = tmp_path / "rows.jsonl"
    args = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1", "--num-images", "2"]
    code = tool.main([*args, "--workers", "0", "--rows", "tiny:opt2-cdec", "--out", str(out)])
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and not row["error"] and row["compile_decoder"] and not row["compile_llm"]
    assert seen == [(False, False)]  # every step of the row decodes the same number of objects
    assert row["compiled_graphs"] == 1 and row["samples_per_s"] > 0
