"""Per-layer activation checkpointing (``mllm=dict(..., gradient_checkpointing=N | fraction | bool)``,
:mod:`projects.sa2va.models.checkpointing`).

A checkpointed layer runs its forward twice in a training step (forward, then the recompute in backward),
any other layer once: counted with forward pre-hooks on each decoder layer. ``use_reentrant=False`` restores
the RNG state for the recompute, so with LoRA dropout on (0.1, seeded) the losses and every trainable gradient
are bit-equal to the step without checkpointing (same weights, same seed).
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER

from projects.sa2va.configs import config_path
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.models.builder import build_component
from projects.sa2va.models.checkpointing import (
    CheckpointPolicy,
    checkpoint_decoder_layers,
    checkpointed_layers,
    llm_decoder_layers,
    resolve_policy,
)
from tests.tiny import DATA_ROOT

LORA_DROPOUT = 0.1


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _config(name: str, layers: int | None) -> Config:
    cfg = Config.fromfile(str(config_path(name)))
    if layers is not None:  # the InternVL tiny model: 2 decoder layers by default
        cfg.model.mllm.llm_config.num_hidden_layers = layers
    cfg.model.lora.dropout = LORA_DROPOUT
    return cfg


def _build(cfg: Config, policy, **overrides):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.mllm.gradient_checkpointing = policy
    model_cfg.update(overrides)
    torch.manual_seed(0)
    return BUILDER.build(model_cfg)


def _batch(cfg: Config, model, idx=(0, 1)):
    ds_cfg = dict(cfg.get("train_dataloader", {}).get("dataset", {}))
    ds_cfg.pop("ann_file", None)
    if ds_cfg:
        ds_cfg.update(ann_file=str(DATA_ROOT / "annotations_train.json"))
        ds_cfg.update(image_root=str(DATA_ROOT / "images"))
        dataset = build_component(ds_cfg)
    else:
        from tests.tiny import build_tiny_dataset

        dataset = build_tiny_dataset(cfg)
    return model.data_preprocessor(sa2va_collate([dataset[i] for i in idx]))["data"]


def _step(model, batch) -> tuple[list[int], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step (forward + backward, seeded): forward calls per decoder layer, losses, gradients."""
    layers = llm_decoder_layers(model.mllm.base_llm())
    calls = [0] * len(layers)

    def counter(i):
        def hook(module, args, kwargs):
            calls[i] += 1

        return hook

    handles = [
        layer.register_forward_pre_hook(counter(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        losses = model(batch, mode="loss")
        sum(losses.values()).backward()
    finally:
        for h in handles:
            h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return calls, {k: v.detach() for k, v in losses.items()}, grads


def _assert_same_step(got, want, exact: bool = True) -> None:
    (_, got_losses, got_grads), (_, want_losses, want_grads) = got, want
    assert got_losses.keys() == want_losses.keys()
    assert got_grads.keys() == want_grads.keys() and len(want_grads) > 0
    for k, v in want_losses.items():
        if exact:
            assert torch.equal(got_losses[k], v), (k, got_losses[k], v)
        else:
            torch.testing.assert_close(got_losses[k], v, rtol=2e-6, atol=0, msg=k)
    for k, v in want_grads.items():
        if exact:
            assert torch.equal(got_grads[k], v), (k, (got_grads[k] - v).abs().max())
        else:
            torch.testing.assert_close(got_grads[k], v, rtol=1e-5, atol=1e-7, msg=k)


# --- policy values ---------------------------------------------------------------------------------------
def test_resolve_policy_forms() -> None:
    assert resolve_policy(False, 36) == CheckpointPolicy((), 36)
    assert resolve_policy(0, 36) == CheckpointPolicy((), 36)
    assert resolve_policy(True, 36) == CheckpointPolicy(tuple(range(36)), 36, full=True)
    assert resolve_policy(12, 36).layers == tuple(range(12))
    assert resolve_policy(36, 36) == CheckpointPolicy(tuple(range(36)), 36)  # all layers, ViT not included
    assert resolve_policy(1 / 3, 36).layers == tuple(range(12))
    assert resolve_policy(0.3, 36).layers == tuple(range(11))  # 10.8 rounded up
    assert resolve_policy(1.0, 36).layers == tuple(range(36))
    assert resolve_policy(0.01, 36).layers == (0,)
    assert resolve_policy(12, 36).describe() == "decoder layers 0-11 of 36"


@pytest.mark.parametrize(
    ("option", "error", "match"),
    [
        (37, ValueError, r"gradient_checkpointing=37: .* \[0, 36\] \(the LLM has 36 decoder layers\)"),
        (-1, ValueError, r"gradient_checkpointing=-1: .* \[0, 36\]"),
        (0.0, ValueError, r"gradient_checkpointing=0.0: a fraction .* \(0, 1\] \(the LLM has 36"),
        (1.5, ValueError, r"gradient_checkpointing=1.5: a fraction"),
        (float("nan"), ValueError, r"gradient_checkpointing=nan: a fraction"),
        ("8", TypeError, r"got str: '8' \(the LLM has 36 decoder layers\)"),
        (dict(layers=8), TypeError, r"got dict: \{'layers': 8\}"),
        (None, TypeError, r"got NoneType"),
    ],
)
def test_bad_values_name_the_value_and_the_layer_count(option, error, match) -> None:
    with pytest.raises(error, match=match):
        resolve_policy(option, 36)


def test_bad_value_through_the_config_names_the_tiny_layer_count() -> None:
    cfg = _config("_base_/model_tiny", layers=None)
    with pytest.raises(ValueError, match=r"gradient_checkpointing=3: .*\(the LLM has 2 decoder layers\)"):
        _build(cfg, 3)


def test_layer_without_a_per_layer_switch_is_refused() -> None:
    layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="decoder layer 0 \\(Linear\\) is not a transformers"):
        checkpoint_decoder_layers(layers, [0])
    with pytest.raises(ValueError, match=r"layer indices \[3\] outside the 1 decoder layers"):
        checkpoint_decoder_layers(layers, [3])


# --- InternVL (Qwen2 LLM) ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def internvl4():
    """The tiny InternVL Sa2VA with 4 decoder layers, LoRA dropout 0.1: config, a batch, the plain step."""
    cfg = _config("_base_/model_tiny", layers=4)
    plain = _build(cfg, False)
    batch = _batch(cfg, plain)
    return cfg, plain, batch, _step(plain, batch)


@pytest.mark.parametrize(
    ("policy", "chosen"), [(1, [0]), (3, [0, 1, 2]), (0.6, [0, 1, 2]), (4, [0, 1, 2, 3])]
)
def test_internvl_chosen_layers_recompute_and_step_is_bit_equal(internvl4, policy, chosen) -> None:
    cfg, plain, batch, want = internvl4
    model = _build(cfg, policy)
    model.load_state_dict(plain.state_dict(), strict=True)
    layers = llm_decoder_layers(model.mllm.base_llm())
    assert checkpointed_layers(layers) == chosen
    assert not model.mllm.vision_model.gradient_checkpointing  # partial policies leave the ViT alone
    got = _step(model, batch)
    assert want[0] == [1, 1, 1, 1]
    assert got[0] == [2 if i in chosen else 1 for i in range(4)]
    _assert_same_step(got, want, exact=True)


def test_internvl_true_keeps_the_full_behaviour_and_a_later_call_replaces_it(internvl4) -> None:
    cfg, plain, batch, want = internvl4
    model = _build(cfg, True)
    model.load_state_dict(plain.state_dict(), strict=True)
    lm = model.mllm.base_llm()
    assert lm.model.gradient_checkpointing  # transformers' gradient_checkpointing_enable, as before
    assert model.mllm.vision_model.gradient_checkpointing
    assert checkpointed_layers(llm_decoder_layers(lm)) == [0, 1, 2, 3]
    got = _step(model, batch)
    assert got[0] == [2, 2, 2, 2]
    _assert_same_step(got, want, exact=True)
    model.mllm.enable_gradient_checkpointing(2)  # after LoRA: the switches are on the layers PEFT kept
    assert checkpointed_layers(llm_decoder_layers(lm)) == [0, 1]
    assert not lm.model.gradient_checkpointing and not model.mllm.vision_model.gradient_checkpointing
    assert _step(model, batch)[0] == [2, 2, 1, 1]
    model.mllm.enable_gradient_checkpointing(0)
    assert _step(model, batch)[0] == [1, 1, 1, 1]


def test_internvl_partial_policy_with_compiled_layers(internvl4) -> None:
    """``compile_llm`` (layers compiled in place after LoRA, ``aot_eager``): the chosen compiled layers are
    recomputed, the losses and gradients are the eager step's (aot_eager runs the same ops)."""
    cfg, plain, batch, want = internvl4
    model = _build(cfg, 2, compile_llm=dict(backend="aot_eager"))
    model.load_state_dict(plain.state_dict(), strict=True)
    from projects.sa2va.models.compile import is_compiled

    layers = llm_decoder_layers(model.mllm.base_llm())
    assert all(is_compiled(layer) for layer in layers)
    assert checkpointed_layers(layers) == [0, 1]
    got = _step(model, batch)
    assert got[0] == [2, 2, 1, 1]
    _assert_same_step(got, want, exact=False)


def _saved_bytes(model, batch) -> int:
    """Bytes of the distinct tensors (by storage) saved for backward outside checkpointed regions during
    one training forward (what stays alive until the backward)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    torch.manual_seed(123)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = model(batch, mode="loss")
    sum(losses.values()).backward()
    return sum(seen.values())


def test_internvl_saved_bytes_fall_as_more_layers_are_checkpointed(internvl4) -> None:
    cfg, plain, batch, _ = internvl4
    saved = []
    for n in range(5):
        model = _build(cfg, n)
        model.load_state_dict(plain.state_dict(), strict=True)
        saved.append(_saved_bytes(model, batch))
    assert all(a > b for a, b in itertools.pairwise(saved)), saved
    # each checkpointed layer drops about the same bytes (same shapes)
    drops = [a - b for a, b in itertools.pairwise(saved)]
    assert max(drops) < 1.5 * min(drops), drops


# --- Qwen3-VL ---------------------------------------------------------------------------------------------
def test_qwen3vl_chosen_layers_recompute_and_step_is_bit_equal() -> None:
    cfg = _config("sa2va_tiny_qwen3vl_demo", layers=None)
    plain = _build(cfg, False)
    batch = _batch(cfg, plain)
    want = _step(plain, batch)
    n = len(llm_decoder_layers(plain.mllm.base_llm()))
    assert n == 3 and want[0] == [1, 1, 1]
    model = _build(cfg, 2)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert not any(getattr(b, "gradient_checkpointing", False) for b in model.mllm.vision_model.modules())
    got = _step(model, batch)
    assert got[0] == [2, 2, 1]
    _assert_same_step(got, want, exact=True)
    full = _build(cfg, True)  # the behaviour before the policy: the text decoder and the vision tower
    assert checkpointed_layers(llm_decoder_layers(full.mllm.base_llm())) == [0, 1, 2]
    assert full.mllm.vision_model.is_gradient_checkpointing


# --- InternLM2 (own decoder code) --------------------------------------------------------------------------
def test_internlm2_adapter_partial_policy(tmp_path) -> None:
    """The InternLM2 family through its adapter (real sentencepiece tokenizer, LoRA with dropout): the
    chosen layers recompute, logits loss and gradients equal the step without checkpointing."""
    from projects.sa2va.models.internlm2_tokenizer import build_tiny_internlm2_tokenizer
    from projects.sa2va.models.internvl import InternLM2InternVL

    tok_dir = tmp_path / "tok"
    build_tiny_internlm2_tokenizer(tok_dir)
    base_cfg = _config("_base_/model_tiny", layers=None)
    vision = dict(base_cfg.model.mllm.vision_config)
    llm = dict(
        vocab_size=900,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )

    def build(policy):
        from projects.sa2va.models.internlm2_tokenizer import load_internlm2_tokenizer

        torch.manual_seed(0)
        m = InternLM2InternVL(
            tokenizer=load_internlm2_tokenizer(tok_dir),
            vision_config=vision,
            llm_config=llm,
            gradient_checkpointing=policy,
        )
        m.resize_token_embeddings()
        m.apply_lora(r=4, alpha=8, dropout=LORA_DROPOUT)
        return m

    def step(m):
        layers = llm_decoder_layers(m.base_llm())
        calls = [0] * len(layers)
        handles = [
            layer.register_forward_pre_hook(lambda mod, a, i=i: calls.__setitem__(i, calls[i] + 1))
            for i, layer in enumerate(layers)
        ]
        m.train()
        m.zero_grad(set_to_none=True)
        ids = torch.arange(2 * 19).reshape(2, 19) % 700 + 10
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        torch.manual_seed(7)
        logits, _ = m(ids, attention_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        for h in handles:
            h.remove()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return calls, {"loss": loss.detach()}, grads

    plain = build(False)
    want = step(plain)
    model = build(2)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert checkpointed_layers(llm_decoder_layers(model.base_llm())) == [0, 1]
    got = step(model)
    assert want[0] == [1, 1, 1] and got[0] == [2, 2, 1]
    _assert_same_step(got, want, exact=True)
    full = build(True)  # transformers' gradient_checkpointing_enable: every layer, as before
    full.load_state_dict(plain.state_dict(), strict=True)
    got = step(full)
    assert got[0] == [2, 2, 2]
    _assert_same_step(got, want, exact=True)


def test_fraction_rounds_up() -> None:
    assert len(resolve_policy(0.5, 3).layers) == math.ceil(1.5) == 2
