"""The copy-free forward of PEFT's trainable-token layers (:mod:`projects.sa2va.models.trainable_tokens`,
``lora=dict(train_embeddings='new_tokens')``, on by default; ``fast_trainable_tokens=False`` is PEFT's own).

On the tiny official-layout folders of the InternVL families (Qwen2, InternLM2) and the Qwen-VL families:
the fast embedding alone gives bit-equal losses and gradients over AdamW steps; the fast embedding and head
give the same losses and gradients up to float rounding; the profiled training step runs no
``index_copy`` / ``clone`` / matmul with a ``[V, H]`` (vocabulary x hidden) result, which PEFT's forward does;
PEFT's other states (disabled, merged) keep PEFT's values; unsupported base layers are refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2Config, Qwen2ForCausalLM

from projects.sa2va.models.trainable_tokens import (
    FastTrainableTokensLayer,
    make_fast,
    use_fast_trainable_tokens,
)
from tests.checkpoint.hf_fixture import write_official_folder
from tests.checkpoint.test_hf_sa2va import make_batch
from tests.models.test_lowmem_embeddings import LOWMEM
from tests.models.test_lowmem_embeddings import build as build_internvl

INTERNVL = ("qwen2", "internlm2")
QWENVL = ("qwen2_5_vl", "qwen3_vl")
STEPS = 3
SLOW = dict(LOWMEM, fast_trainable_tokens=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    from tests.checkpoint import qwenvl_fixture

    root = tmp_path_factory.mktemp("fast_tokens")
    out = {fam: write_official_folder(root / fam, fam, seed=3) for fam in INTERNVL}
    out.update({fam: qwenvl_fixture.write_official_folder(root / fam, fam, seed=3) for fam in QWENVL})
    return out


def build_pair(folders, family: str, embed_only: bool = False):
    """``(peft, fast)``: the same model twice (same seed); ``fast`` has the fast forward on both layers, or
    with ``embed_only`` on the input embedding alone. Returns the two models and a training batch."""
    if family in INTERNVL:
        slow, _ = build_internvl(folders[family], family, seed=1, lora=SLOW)
        fast, _ = build_internvl(folders[family], family, seed=1, lora=SLOW if embed_only else LOWMEM)
        batch = make_batch(slow)
    else:
        from tests.checkpoint.test_qwenvl_families import build as build_qwenvl
        from tests.checkpoint.test_qwenvl_families import dataset as qwenvl_dataset
        from tests.models.test_sa2va_training import batch_of

        slow, _ = build_qwenvl(folders[family], family, seed=1, lora=SLOW)
        fast, _ = build_qwenvl(folders[family], family, seed=1, lora=SLOW if embed_only else LOWMEM)
        batch = batch_of(qwenvl_dataset(folders[family], family, objects_per_image=1), [0])
    if embed_only:
        make_fast(fast.mllm.base_llm().get_input_embeddings().token_adapter)
    return slow, fast, batch


def layers(model) -> list[TrainableTokensLayer]:
    lm = model.mllm.base_llm()
    return [lm.get_input_embeddings().token_adapter, lm.get_output_embeddings().token_adapter]


def train(model, batch, steps: int = STEPS) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """AdamW (lr 1e-2, so the deltas move away from the base rows); per step the loss and every gradient."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses, grads = [], []
    for _ in range(steps):
        loss = sum(model(batch, mode="loss").values())
        opt.zero_grad()
        loss.backward()
        losses.append(loss.detach().clone())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
    return losses, grads


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("family", INTERNVL + QWENVL)
def test_fast_embedding_alone_is_bit_exact(folders, family):
    slow, fast, batch = build_pair(folders, family, embed_only=True)
    emb, head = layers(fast)
    assert type(emb) is FastTrainableTokensLayer and type(head) is TrainableTokensLayer
    ls, gs = train(slow, batch)
    lf, gf = train(fast, batch)
    for step in range(STEPS):
        assert torch.equal(ls[step], lf[step]), (step, ls[step], lf[step])
        assert gs[step].keys() == gf[step].keys()
        for n, g in gs[step].items():
            assert torch.equal(g, gf[step][n]), (step, n, (g - gf[step][n]).abs().max())
    moved = emb.trainable_tokens_delta["default"].detach() - emb.trainable_tokens_original["default"]
    assert moved.abs().amax(dim=1).gt(0).any(), "the deltas did not move away from the base rows"


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = sum(model(batch, mode="loss").values())
    loss.backward()
    return loss.detach().clone(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("family", INTERNVL + QWENVL)
def test_fast_embedding_and_head_match_peft(folders, family):
    """Both layers fast (the default), at the weights of each of ``STEPS`` AdamW steps of the PEFT model
    (copied into the fast one, so the deltas have moved away from the base rows).

    The head computes the trained columns in their own ``x @ delta.T`` and the input gradient as
    ``grad(base columns) @ W + grad(trained columns) @ delta`` instead of one matmul with the merged
    weight, so float sums run in another order: values agree to float32 rounding, not bitwise, and
    everything upstream of the head (the embedding gradients included) inherits it. Bounds: the loss and
    every gradient within 1e-6 of its tensor's largest entry; gradients that are zero in exact arithmetic
    (largest entry < 1e-8, e.g. SAM2's attention key biases at ~1e-11) within 1e-9 absolute."""
    slow, fast, batch = build_pair(folders, family)
    assert [type(m) for m in layers(fast)] == [FastTrainableTokensLayer] * 2
    assert [type(m) for m in layers(slow)] == [TrainableTokensLayer] * 2
    assert torch.nn.Module.state_dict(fast).keys() == torch.nn.Module.state_dict(slow).keys()
    opt = torch.optim.AdamW([p for p in slow.parameters() if p.requires_grad], lr=1e-2)
    worst: dict[str, float] = {}
    for _ in range(STEPS):
        torch.nn.Module.load_state_dict(fast, torch.nn.Module.state_dict(slow), strict=True)
        lf, gf = loss_and_grads(fast, batch)
        ls, gs = loss_and_grads(slow, batch)
        assert gs.keys() == gf.keys()
        worst["loss"] = max(worst.get("loss", 0.0), max_rel(lf, ls))
        for n, g in gs.items():
            if float(g.abs().max()) < 1e-8:
                key, diff = "zero (abs)", float((gf[n] - g).abs().max())
            else:
                key, diff = ("tokens" if "trainable_tokens_delta" in n else "other"), max_rel(gf[n], g)
            worst[key] = max(worst.get(key, 0.0), diff)
        opt.step()
    moved = layers(slow)[0].trainable_tokens_delta["default"].detach() - layers(slow)[
        0
    ].trainable_tokens_original["default"].to(torch.float32)
    assert moved.abs().amax(dim=1).gt(0).any(), "the deltas did not move away from the base rows"
    print(f"{family}: max relative differences {worst}")  # pytest -s shows the numbers
    bounds = {"loss": 1e-6, "tokens": 1e-6, "other": 1e-6, "zero (abs)": 1e-9}
    assert all(worst[k] <= bounds[k] for k in worst), worst


def profiled_step_ops(model, batch) -> list[tuple[str, list]]:
    """``(op name, input shapes)`` of every ATen op of one forward + backward, profiled on the CPU."""
    model.train()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        loss = sum(model(batch, mode="loss").values())
        loss.backward()
    return [(e.name, e.input_shapes) for e in prof.events()]


WEIGHT_SIZED = ("aten::index_copy", "aten::index_copy_", "aten::clone", "aten::index_fill", "aten::mm")


def weight_sized_ops(ops, vocab: int, hidden: int) -> dict[str, int]:
    """Counts of the ops of :data:`WEIGHT_SIZED` with a ``[V, H]`` input or a ``[V, N] x [N, H]`` matmul
    (the head's weight gradient), i.e. those that build a tensor the size of the whole weight."""
    counts: dict[str, int] = {}
    for name, shapes in ops:
        if name not in WEIGHT_SIZED:
            continue
        dims = [list(s) for s in shapes if isinstance(s, (list, tuple))]
        if name == "aten::mm":
            hit = len(dims) >= 2 and len(dims[0]) == 2 and len(dims[1]) == 2
            hit = hit and dims[0][0] == vocab and dims[1][1] == hidden
        else:
            hit = [vocab, hidden] in dims
        if hit:
            counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize("family", ["qwen2", "qwen3_vl"])
def test_step_builds_no_weight_sized_copy(folders, family):
    slow, fast, batch = build_pair(folders, family)
    weight = fast.mllm.base_llm().get_input_embeddings().token_adapter.base_layer.weight
    vocab, hidden = weight.shape
    peft_ops = weight_sized_ops(profiled_step_ops(slow, batch), vocab, hidden)
    fast_ops = weight_sized_ops(profiled_step_ops(fast, batch), vocab, hidden)
    print(f"{family} [V, H] = [{vocab}, {hidden}] ops: PEFT {peft_ops}, fast {fast_ops}")
    # PEFT: one out-of-place [V, H] index_copy per layer (its clone is inside the op) and the head's [V, H]
    # weight-gradient matmul in the backward. The fast forward: none of them.
    assert peft_ops.get("aten::index_copy", 0) >= 2 and peft_ops.get("aten::mm", 0) >= 1, peft_ops
    assert fast_ops == {}, fast_ops


def test_ids_are_built_once_per_device(folders):
    _, fast, batch = build_pair(folders, "qwen2")
    emb = layers(fast)[0]
    fast.train()
    fast(batch, mode="loss")
    first = emb.__dict__["_fast_token_index"]["default"]
    fast(batch, mode="loss")
    again = emb.__dict__["_fast_token_index"]["default"]
    assert again is first
    ids, slot = first[1], first[2]
    assert ids.tolist() == fast.mllm.new_token_ids()
    assert slot[ids].tolist() == list(range(len(ids)))
    assert int((slot >= 0).sum()) == len(ids)


def tiny_lm(tie: bool = False) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    return Qwen2ForCausalLM(cfg)


def tiny_peft_lm(tie: bool = False, bias: bool = False):
    """A plain tiny Qwen2 LM with PEFT trainable tokens on its embedding and head (ids 3, 7, 60)."""
    lm = tiny_lm(tie)
    if bias:
        lm.lm_head = torch.nn.Linear(16, 64, bias=True)
    ids = [3, 7, 60]
    targets = {"embed_tokens": ids, "lm_head": ids}
    peft_cfg = LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=targets)
    return get_peft_model(lm, peft_cfg), ids


def test_tied_head_and_peft_states_keep_peft_values():
    """A tied embedding / head (PEFT shares the delta between them; not used by Sa2VA's families, which
    untie), then disabled and merged adapters: the fast layers give PEFT's values in every state."""
    slow, _ = tiny_peft_lm(tie=True)
    fast, _ = tiny_peft_lm(tie=True)
    names = use_fast_trainable_tokens(fast)
    assert len(names) == 2, names  # the embedding's layer and the head's tied one
    for m in (slow, fast):
        with torch.no_grad():
            m.get_input_embeddings().token_adapter.trainable_tokens_delta["default"].add_(0.5)
    x = torch.tensor([[1, 3, 7, 60, 2, 3]])
    head = fast.get_output_embeddings().token_adapter
    assert (
        type(head) is FastTrainableTokensLayer
        and head.tied_adapter is fast.get_input_embeddings().token_adapter
    )
    base = slow.get_base_model()
    with slow.disable_adapter():
        plain = base(input_ids=x).logits
    active = slow(input_ids=x).logits
    assert not torch.allclose(active, plain), (
        "the deltas change nothing: the test would not see a wrong forward"
    )
    torch.testing.assert_close(fast(input_ids=x).logits, active, rtol=1e-6, atol=1e-6)
    with slow.disable_adapter(), fast.disable_adapter():
        assert torch.equal(fast(input_ids=x).logits, slow(input_ids=x).logits)
    slow.merge_adapter()
    fast.merge_adapter()
    assert torch.equal(fast(input_ids=x).logits, slow(input_ids=x).logits)
    slow.unmerge_adapter()
    fast.unmerge_adapter()
    torch.testing.assert_close(fast(input_ids=x).logits, active, rtol=1e-6, atol=1e-6)
    assert fast.state_dict().keys() == slow.state_dict().keys()


def test_unsupported_base_layers_are_refused():
    model, _ = tiny_peft_lm(bias=True)
    with pytest.raises(ValueError, match=r"lm_head.*nn.Linear with a bias.*fast_trainable_tokens=False"):
        use_fast_trainable_tokens(model)
    model, _ = tiny_peft_lm()
    model.get_input_embeddings().token_adapter.base_layer.max_norm = 1.0
    with pytest.raises(ValueError, match=r"embed_tokens.*max_norm"):
        use_fast_trainable_tokens(model)
    plain = get_peft_model(tiny_lm(), LoraConfig(r=2, target_modules=["k_proj"]))
    with pytest.raises(ValueError, match="no PEFT TrainableTokensLayer"):
        use_fast_trainable_tokens(plain)


def test_fast_layers_compile_without_graph_breaks():
    """``torch.compile(fullgraph=True)`` (the AOT-autograd tracer, no codegen) traces both fast layers, the
    id cache being built inside the first traced call, and gives the eager values and gradients."""
    fast, _ = tiny_peft_lm()
    use_fast_trainable_tokens(fast)
    emb, head = fast.get_input_embeddings().token_adapter, fast.get_output_embeddings().token_adapter
    x = torch.tensor([[1, 3, 7, 60, 2, 3]])
    h = torch.randn(6, 16)
    for layer, inp in ((emb, x), (head, h)):
        delta = layer.trainable_tokens_delta["default"]
        eager = layer(inp)
        (g_eager,) = torch.autograd.grad(eager.square().sum(), delta)
        layer.__dict__.pop("_fast_token_index", None)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(inp)
        (g_compiled,) = torch.autograd.grad(compiled.square().sum(), delta)
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-6, atol=1e-6)
