"""Releasing PEFT's frozen originals of the embedding / head copies (``train_embeddings=True``, the default
``keep_originals=False``) changes no computation and frees exactly their bytes (issue 19, memory).

Per family (tiny InternVL + Qwen2 from the config, tiny InternLM2 official-layout folder with its own
sentencepiece tokenizer): a model that keeps the originals and one that releases them, built from the same
seed, train 20 AdamW iterations with losses equal within 1e-6; the parameter bytes differ by the two
originals; the trainable checkpoints have the same keys and load strictly into each other; a reference-style
full state (with ``original_module`` tensors) still loads; disabling the adapter fails with a clear error; a
run killed while it kept the originals resumes without them to the losses of a run that never kept them.
"""

from __future__ import annotations

import signal

import pytest
import torch
from mmengine.config import Config
from torch import nn
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.checkpoint.reference_pth import load_reference_state
from projects.sa2va.configs import config_path
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.engine.hooks import read_loss_records
from projects.sa2va.models.mllm import ReleasedOriginal
from projects.sa2va.models.tokenizer import load_tokenizer
from tests.checkpoint.hf_fixture import model_cfg, write_official_folder
from tests.procs import start_tiny_fault_training as _run
from tests.tiny import build_tiny_dataset, tiny_processor

ITERATIONS = 20
LOSS_TOL = 1e-6
FAMILIES = ("qwen2", "internlm2")


def _model_cfg(family: str, folder) -> Config:
    if family == "qwen2":
        return Config.fromfile(str(config_path("_base_/model_tiny")))
    return model_cfg(folder, family)


def _build(cfg: Config, keep_originals: bool, seed: int = 0):
    mcfg = cfg.model.copy()
    mcfg.lora = {**mcfg.lora, "keep_originals": keep_originals}
    torch.manual_seed(seed)
    return BUILDER.build(mcfg)


def _dataset(family: str, folder):
    tiny = Config.fromfile(str(config_path("_base_/model_tiny")))
    if family == "qwen2":
        return build_tiny_dataset(tiny)
    tok = dict(type=load_tokenizer, path=str(folder))
    return build_tiny_dataset(
        tiny, processor=tiny_processor(tiny, tokenizer=tok, template=PROMPT_TEMPLATE["internlm2_chat"])
    )


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    family = request.param
    folder = None
    if family == "internlm2":
        folder = write_official_folder(tmp_path_factory.mktemp("internlm2"), "internlm2", seed=1)
    cfg = _model_cfg(family, folder)
    kept, released = _build(cfg, keep_originals=True), _build(cfg, keep_originals=False)
    dataset = _dataset(family, folder)
    batches = [sa2va_collate([dataset[i], dataset[i + 1]]) for i in (0, 2, 4)]
    return family, kept, released, batches


def _train(model, batches) -> list[dict[str, float]]:
    model.train()
    torch.manual_seed(123)  # LoRA dropout draws the same masks in both runs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    history = []
    for it in range(ITERATIONS):
        data = model.data_preprocessor(batches[it % len(batches)], True)
        losses = model(**data, mode="loss")
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    lm = model.mllm.base_llm()
    return {"embed": lm.get_input_embeddings(), "head": lm.get_output_embeddings()}


def test_released_originals_free_exactly_their_bytes(pair):
    _family, kept, released, _ = pair
    w_kept, w_rel = _wrappers(kept), _wrappers(released)
    expected = 0
    for part in ("embed", "head"):
        original = w_kept[part].original_module
        expected += original.weight.numel() * original.weight.element_size()
        stub = w_rel[part].original_module
        assert isinstance(stub, ReleasedOriginal)
        assert stub.shape == tuple(original.weight.shape) and stub.dtype == original.weight.dtype
        # Empty placeholders keep the parameter list (the optimiser's) as long as before, in the same order.
        assert [n for n, _ in stub.named_parameters()] == [n for n, _ in original.named_parameters()]
        assert all(p.numel() == 0 and not p.requires_grad for p in stub.parameters())
        assert not list(stub.buffers())
    assert _param_bytes(kept) - _param_bytes(released) == expected > 0
    assert [n for n, _ in kept.named_parameters()] == [n for n, _ in released.named_parameters()]
    assert not [k for k in nn.Module.state_dict(released) if ".original_module." in k]
    assert len([k for k in nn.Module.state_dict(kept) if ".original_module." in k]) == 2
    # Nothing trainable changed: same trainable tensors, same values at build, same checkpoint keys.
    assert kept.trainable_keys() == released.trainable_keys()
    a, b = kept.state_dict(), released.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_twenty_iterations_give_the_same_losses(pair):
    family, kept, released, batches = pair
    start = {k: v.clone() for k, v in released.state_dict().items()}
    ref, got = _train(kept, batches), _train(released, batches)
    assert len(ref) == len(got) == ITERATIONS
    for it, (r, g) in enumerate(zip(ref, got)):
        assert r.keys() == g.keys()
        for k in r:
            assert abs(r[k] - g[k]) <= LOSS_TOL, f"{family} iteration {it} {k}: {r[k]} vs {g[k]}"
    # Training moved the trained copies (so the comparison covered them) ...
    moved = [
        k
        for k, v in released.state_dict().items()
        if ".modules_to_save." in k and not torch.equal(v, start[k])
    ]
    assert len(moved) == 2, moved
    # ... and the trainable checkpoint of one build loads strictly into the other.
    kept.load_state_dict(released.state_dict(), strict=True)
    released.load_state_dict(kept.state_dict(), strict=True)


def test_reference_full_state_with_originals_loads_into_a_released_model(pair):
    """A DeepSpeed-style full state holds ``original_module`` tensors: skipped, the copies loaded."""
    family, kept, _released, _batches = pair
    state = {
        "mllm.model." + k[len("mllm.") :] if k.startswith("mllm.") else k: v.clone()
        for k, v in nn.Module.state_dict(kept).items()
    }
    assert any(".original_module." in k for k in state)
    fresh = _build(_model_cfg(family, kept.mllm.path), keep_originals=False, seed=5)
    load_reference_state(fresh, state, source="full.pth")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, kept.state_dict()[k]), k


def test_disabling_the_adapter_names_the_released_original(pair):
    _family, kept, released, batches = pair
    data = released.data_preprocessor(batches[0], True)
    released.eval()
    with released.mllm.language_model.disable_adapter(), pytest.raises(RuntimeError, match="released"):
        released(**data, mode="loss")
    kept.eval()
    with kept.mllm.language_model.disable_adapter():
        kept(**kept.data_preprocessor(batches[0], True), mode="loss")  # the original is there


# --- resume across the change ---------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_saved_with_originals_resumes_without_them(tmp_path):
    """mmengine's optimiser state indexes every parameter, frozen ones included: the placeholders keep an
    ``iter_N.pth`` saved by a model that kept the originals (e.g. before this change) resumable."""
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()
    ref = _run(ref_dir, log="reference.log")
    killed = _run(
        run_dir, log="killed.log", cfg_options=("custom_hooks.0.at=3", "model.lora.keep_originals=True")
    )
    assert killed.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    resumed = _run(run_dir, "--resume", "auto", log="resumed.log")
    for name, proc in (("resumed", resumed), ("reference", ref)):
        assert proc.wait(timeout=300) == 0, f"{name}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert "resuming at iteration 2" in resumed_log and "released the frozen originals" in resumed_log
    assert "released the frozen originals" not in (tmp_path / "killed.log").read_text()
    expected = read_loss_records(ref_dir / "train_losses.jsonl")
    got = read_loss_records(run_dir / "train_losses.jsonl")
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for it in expected:
        for key in ("loss", "loss_lm", "loss_mask"):
            assert got[it][key] == expected[it][key], f"iteration {it} {key}"
