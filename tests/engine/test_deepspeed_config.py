"""The DeepSpeed JSON of tools/train.py --deepspeed: names, precision from the config's optim_wrapper, the
ZeRO-3 persistence setting, and the two DeepSpeed workarounds of Sa2VAFlexibleRunner (no HF ZeRO-3 init
while building, backward counters on every module)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from projects.sa2va.engine.deepspeed_config import (
    NAMES,
    SHIPPED_DIR,
    DeepSpeedConfigError,
    apply_precision,
    apply_zero3_settings,
    autocast_dtype,
    prepare_deepspeed_config,
    read_deepspeed_json,
    resolve_deepspeed_file,
)
from projects.sa2va.engine.optim import DeviceAmpOptimWrapper

XTUNER_ZERO3 = {
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 3, "overlap_comm": True},
    "fp16": {"enabled": "auto", "initial_scale_power": 16},
    "bf16": {"enabled": "auto"},
}


def test_names_mean_the_shipped_files_and_every_shipped_file_is_valid():
    assert resolve_deepspeed_file("zero2") == SHIPPED_DIR / "zero2.json"
    assert resolve_deepspeed_file("deepspeed_zero3") == SHIPPED_DIR / "zero3.json"  # xtuner's name
    for name in NAMES:
        cfg = read_deepspeed_json(resolve_deepspeed_file(name))
        stage = int(name[-1])
        assert cfg["zero_optimization"]["stage"] == stage
        assert "bf16" not in cfg and "fp16" not in cfg  # precision comes from the config
        out, notes = prepare_deepspeed_config(cfg, "bfloat16")
        assert notes == [] and out["torch_autocast"]["enabled"] is True


def test_a_file_path_is_used_and_a_bad_value_names_the_choices(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text("{}")
    assert resolve_deepspeed_file(str(f)) == f
    with pytest.raises(DeepSpeedConfigError, match=r"'zero4'.*zero2"):
        resolve_deepspeed_file("zero4")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match=r"bad\.json"):
        read_deepspeed_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DeepSpeedConfigError, match=r"bad\.json.*JSON object, got list"):
        read_deepspeed_json(bad)


@pytest.mark.parametrize(
    ("wrapper", "cuda", "expected"),
    [
        (dict(type=DeviceAmpOptimWrapper, dtype="bfloat16"), True, "bfloat16"),
        (dict(type=DeviceAmpOptimWrapper, dtype="bfloat16"), False, None),  # fp32 on CPU, as under DDP
        (dict(type="DeviceAmpOptimWrapper"), True, "bfloat16"),
        (dict(type=DeviceAmpOptimWrapper, dtype=None), True, None),
        (dict(type=AmpOptimWrapper), True, "float16"),  # mmengine's default
        (dict(type="AmpOptimWrapper", dtype="bfloat16"), False, "bfloat16"),
        (dict(type=OptimWrapper), True, None),
        (dict(), True, None),
    ],
)
def test_autocast_dtype_follows_the_optim_wrapper(wrapper, cuda, expected):
    assert autocast_dtype(wrapper, cuda) == expected


def test_autocast_dtype_rejects_what_the_wrapper_rejects():
    with pytest.raises(DeepSpeedConfigError, match="NoSuchWrapper"):
        autocast_dtype(dict(type="NoSuchWrapper"), True)
    with pytest.raises(ValueError, match="float16 needs loss scaling"):  # as DeviceAmpOptimWrapper itself
        autocast_dtype(dict(type=DeviceAmpOptimWrapper, dtype="float16"), True)


def test_whole_model_half_precision_becomes_autocast_with_fp32_gradient_reduction():
    out, notes = apply_precision(XTUNER_ZERO3, "bfloat16")
    assert out["bf16"] == {"enabled": False}
    assert out["fp16"] == {"enabled": False, "initial_scale_power": 16}
    assert out["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert len(notes) == 2 and all("switched off" in n for n in notes)
    assert XTUNER_ZERO3["bf16"] == {"enabled": "auto"}, "the input is not modified"
    # fp32 config: no autocast at all, and a user's autocast section is switched off with a note.
    out, notes = apply_precision({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, None)
    assert out["torch_autocast"]["enabled"] is False and notes == [
        "torch_autocast switched off: the config's optim_wrapper trains in fp32"
    ]
    # A user's own autocast options are kept; the dtype is the config's.
    mine = {"torch_autocast": {"enabled": True, "dtype": "float16", "lower_precision_safe_modules": ["x.Y"]}}
    out, notes = apply_precision(mine, "bfloat16")
    expected = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": ["x.Y"]}
    assert out["torch_autocast"] == expected
    assert notes == ["torch_autocast dtype float16 -> bfloat16 (the config's optim_wrapper)"]


def test_zero3_keeps_no_persistent_parameters():
    out, notes = apply_zero3_settings(XTUNER_ZERO3)
    assert out["zero_optimization"]["stage3_param_persistence_threshold"] == 0 and notes == []
    given = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1e5}}
    out, notes = apply_zero3_settings(given)
    assert out["zero_optimization"]["stage3_param_persistence_threshold"] == 0 and "-> 0" in notes[0]
    out, notes = apply_zero3_settings({"zero_optimization": {"stage": 2}})
    assert "stage3_param_persistence_threshold" not in out["zero_optimization"] and notes == []


def test_launch_prepares_the_strategy_json(tmp_path):
    """What ``tools/train.py --deepspeed`` hands to the strategy (engine/launch.py; formerly a JSON file
    written by tools/train.py for xtuner's train tool)."""
    import tools.train as train_tool
    from projects.sa2va.engine.builder import load_config
    from projects.sa2va.engine.launch import deepspeed_settings

    src = tmp_path / "xtuner_like.json"
    src.write_text(json.dumps(XTUNER_ZERO3))
    demo = Path(__file__).resolve().parents[2] / "projects/sa2va/configs/sa2va_tiny_demo.py"
    cfg = load_config(demo, {"optim_wrapper.type": "AmpOptimWrapper"})  # dtype bfloat16 in the config
    strategy = deepspeed_settings(cfg, str(src), cuda=False)
    assert strategy["config"] == prepare_deepspeed_config(XTUNER_ZERO3, "bfloat16")[0]
    assert strategy["gradient_accumulation_steps"] == cfg.optim_wrapper.accumulative_counts
    assert strategy["train_micro_batch_size_per_gpu"] == cfg.train_dataloader.batch_size
    assert strategy["gradient_clipping"] == cfg.optim_wrapper.clip_grad.max_norm
    # --cfg-options reach the precision decision.
    cfg = load_config(demo, {"optim_wrapper.type": "OptimWrapper"})
    assert deepspeed_settings(cfg, str(src), cuda=False)["config"]["torch_autocast"]["enabled"] is False
    with pytest.raises(DeepSpeedConfigError, match="zero4"):
        deepspeed_settings(cfg, "zero4", cuda=False)
    # --deepspeed=VALUE is recognised too.
    assert train_tool.parse_args(["cfg.py", f"--deepspeed={src}", "--work-dir", "w"]).deepspeed == str(src)
    assert train_tool.parse_args(["cfg.py", "--work-dir", "w"]).deepspeed is None


def test_model_is_built_without_transformers_zero3_init():
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    from projects.sa2va.engine.flexible_runner import _without_hf_zero3_init

    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    with _without_hf_zero3_init():
        assert not is_deepspeed_zero3_enabled()
    assert is_deepspeed_zero3_enabled()
    del keep


def test_every_module_gets_zero3_backward_counters_modules_to_save_wrapper_included():
    from projects.sa2va.engine.flexible_runner import _init_zero3_backward_counters
    from tests.tiny import build_tiny_model

    model, _ = build_tiny_model()
    wrappers = [m for m in model.modules() if type(m).__name__ == "ModulesToSaveWrapper"]
    assert wrappers, "the tiny LoRA recipe trains lm_head / embed_tokens through modules_to_save"
    _init_zero3_backward_counters(model)
    for m in model.modules():
        assert m.__dict__["ds_grads_remaining"] == 0 and m.__dict__["applied_pre_backward_ref_cnt"] == 0
    wrappers[0].ds_grads_remaining = 3  # a counter DeepSpeed already keeps is left alone
    _init_zero3_backward_counters(model)
    assert wrappers[0].__dict__["ds_grads_remaining"] == 3


def test_zero_stage_of_a_strategy():
    from types import SimpleNamespace

    from projects.sa2va.engine.flexible_runner import _zero_stage

    assert _zero_stage(SimpleNamespace(config={"zero_optimization": {"stage": 3}})) == 3
    assert _zero_stage(SimpleNamespace(config={"zero_optimization": None})) == 0
    assert _zero_stage(SimpleNamespace(config={})) == 0
    assert _zero_stage(object()) == 0
