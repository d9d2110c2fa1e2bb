"""Fast model build: no initialiser runs for weights a loader overwrites; nothing is left uninitialised."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from xtuner.registry import BUILDER

from projects.sa2va.models import fast_init
from projects.sa2va.models.sa2va import Sa2VAModel
from tests.checkpoint.hf_fixture import model_cfg, write_official_folder
from tests.tiny import build_tiny_model

BF16 = dict(torch_dtype="bfloat16")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fast_build")
    return {f: write_official_folder(root / f, f, seed=3) for f in ("qwen2", "internlm2")}


def all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers (persistent or not) and plain tensor attributes (RoPE tables) by name."""
    out = {n: t.detach() for n, t in model.named_parameters()}
    out.update({n: t for n, t in model.named_buffers()})
    for mname, mod in model.named_modules():
        for k, v in vars(mod).items():
            if isinstance(v, torch.Tensor) and not k.startswith("_"):
                out[f"{mname}.{k}"] = v
    return out


def build(cfg, **overrides) -> Sa2VAModel:
    mcfg = copy.deepcopy(cfg.model)
    mcfg.update(overrides)
    return BUILDER.build(mcfg)


@pytest.mark.parametrize("family", ["qwen2", "internlm2"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_fast_loaded_build_equals_slow_build_bit_for_bit(folders, family, dtype):
    cfg = model_cfg(folders[family], family)
    if dtype is not None:
        cfg.model.mllm.update(BF16)
        cfg.model.grounding_encoder.update(BF16)
    torch.manual_seed(0)
    slow = build(cfg, skip_init=False)
    torch.manual_seed(0)
    fast = build(cfg)  # skip_init defaults to on with load_weights
    a, b = all_tensors(slow), all_tensors(fast)
    assert a.keys() == b.keys()
    # LoRA factors are drawn after the load, from an RNG the slow build advanced further: not compared.
    names = [n for n in a if ".lora_" not in n]
    assert any("rotary_emb.inv_freq" in n for n in names) and any("freqs_cis" in n for n in names)
    for n in names:
        assert a[n].dtype == b[n].dtype, n
        assert a[n].shape == b[n].shape, n
        assert torch.equal(a[n], b[n]), n
    # Trainable tensors are fp32 master weights, frozen ones keep the build dtype.
    for n, p in fast.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, n
        elif n.startswith("mllm.vision_model.") and dtype is not None:
            assert p.dtype == torch.bfloat16, n


@pytest.fixture()
def nan_empty(monkeypatch):
    """``torch.empty`` returns NaN-filled floating tensors: any tensor nobody writes stays NaN."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", empty)


def nan_tensors(model: nn.Module) -> list[str]:
    return [n for n, t in all_tensors(model).items() if t.is_floating_point() and bool(t.isnan().any())]


def test_fast_loaded_build_writes_every_tensor(folders, nan_empty):
    cfg = model_cfg(folders["qwen2"], "qwen2")
    cfg.model.grounding_encoder.upsampler = dict(hidden=8, scale=2)  # an extension the folder lacks
    model = build(cfg)
    assert nan_tensors(model) == []


def test_random_build_initialises_every_tensor(nan_empty):
    """The default inits skipped because a module's own init overwrites them: nothing is left over."""
    model, _ = build_tiny_model(mllm=dict(torch_dtype="bfloat16"))
    assert nan_tensors(model) == []
    vit = model.mllm.vision_model
    assert vit.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert 0.01 < float(vit.encoder.layers[0].mlp.fc1.weight.float().std()) < 0.03  # trunc normal 0.02


def test_random_build_is_deterministic():
    a, _ = build_tiny_model(seed=5)
    b, _ = build_tiny_model(seed=5)
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), n


def test_tensor_the_loader_does_not_write_is_an_error(folders):
    cfg = model_cfg(folders["qwen2"], "qwen2")
    with pytest.raises(RuntimeError, match=r"built without initialisation.*skip_init=False"):
        build(cfg, load_weights=lambda model: None)
    with pytest.raises(ValueError, match="skip_init=True needs load_weights"):
        build_tiny_model(skip_init=True)


def test_init_device_cuda_falls_back_to_cpu_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    model, _ = build_tiny_model(init_device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_init_contexts_nest_and_restore():
    original = torch.nn.init.kaiming_uniform_
    with fast_init.no_weight_init():
        assert not fast_init.weight_init_enabled()
        assert torch.nn.init.kaiming_uniform_ is not original
        with fast_init.weight_init_restored():
            assert fast_init.weight_init_enabled() and torch.nn.init.kaiming_uniform_ is original
        with fast_init.torch_init_disabled():
            pass
        assert torch.nn.init.kaiming_uniform_ is not original
    assert fast_init.weight_init_enabled() and torch.nn.init.kaiming_uniform_ is original
    with fast_init.default_dtype(torch.bfloat16):
        assert torch.empty(1).dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
