"""The LM loss with the head applied only at the supervised positions (``Sa2VAModel(lm_logits='supervised')``,
the default) computes what the plain path (``lm_logits='all'``: logits at every position) computes.

Per family (tiny InternVL + Qwen2, tiny Qwen3-VL, tiny InternLM2 official-layout folder): 20 AdamW
iterations from the same weights and random state give losses within 1e-5 and the same first-step
gradients; the head only ever sees the supervised rows; positions computed on the host equal the device
ones; a batch without labels gives a zero loss that keeps the head in the graph.
"""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from xtuner.registry import BUILDER
from xtuner.utils import PROMPT_TEMPLATE

from projects.sa2va.configs import config_path
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.models.sa2va import IGNORE_INDEX, supervised_positions
from projects.sa2va.models.tokenizer import load_tokenizer
from tests.checkpoint.hf_fixture import model_cfg, write_official_folder
from tests.tiny import build_tiny_dataset, build_tiny_model, tiny_processor

ITERATIONS = 20
LOSS_TOL = 1e-5
FAMILIES = ("internvl_qwen2", "qwen3vl", "internlm2")


def _build(family: str, tmp_path_factory):
    """(model, dataset) of ``family``, both tiny and random (fixed seed)."""
    if family == "internvl_qwen2":
        model, cfg = build_tiny_model(seed=0)
        return model, build_tiny_dataset(cfg)
    if family == "qwen3vl":
        cfg = Config.fromfile(str(config_path("sa2va_tiny_qwen3vl_demo")))
        torch.manual_seed(0)
        return BUILDER.build(cfg.model), BUILDER.build(cfg.train_dataloader.dataset)
    folder = write_official_folder(tmp_path_factory.mktemp("internlm2"), "internlm2", seed=1)
    cfg = model_cfg(folder, "internlm2")
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    tiny = Config.fromfile(str(config_path("_base_/model_tiny")))
    tok = dict(type=load_tokenizer, path=str(folder))
    return model, build_tiny_dataset(
        tiny, processor=tiny_processor(tiny, tokenizer=tok, template=PROMPT_TEMPLATE["internlm2_chat"])
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request, tmp_path_factory):
    model, dataset = _build(request.param, tmp_path_factory)
    # Three different batches (different answer lengths, so different supervised positions), cycled.
    batches = [sa2va_collate([dataset[i], dataset[i + 1]]) for i in (0, 2, 4)]
    return request.param, model, batches


def _train(model, batches, mode: str, start: dict[str, torch.Tensor]):
    """``ITERATIONS`` AdamW steps from the trainable state ``start``: (losses per step, step-1 gradients)."""
    model.load_state_dict(start, strict=True)
    model.lm_logits = mode
    model.train()
    torch.manual_seed(123)  # LoRA dropout draws the same masks in both runs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    history, first_grads = [], {}
    for it in range(ITERATIONS):
        data = model.data_preprocessor(batches[it % len(batches)], True)
        losses = model(**data, mode="loss")
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if it == 0:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history, first_grads


def test_supervised_head_equals_full_logits_over_20_iterations(family_setup):
    family, model, batches = family_setup
    assert model.lm_logits == "supervised"  # the default
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        full, full_grads = _train(model, batches, "all", start)
        sup, sup_grads = _train(model, batches, "supervised", start)
    finally:
        model.load_state_dict(start, strict=True)
        model.lm_logits = "supervised"
    for it, (a, b) in enumerate(zip(full, sup)):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= LOSS_TOL, (
                f"{family} iteration {it + 1} {k}: all {a[k]} vs supervised {b[k]}"
            )
    # The loss went somewhere: the comparison covers a training run, not 20 copies of one value.
    assert full[-1]["loss_lm"] < full[0]["loss_lm"] - 0.1, full
    assert full_grads.keys() == sup_grads.keys()
    head_grads = [n for n in full_grads if "lm_head" in n or ".output." in n]
    assert head_grads, sorted(full_grads)[:10]  # the head's trained copy is compared too
    for n in full_grads:
        scale = full_grads[n].abs().max().item()
        assert torch.allclose(sup_grads[n], full_grads[n], rtol=1e-4, atol=1e-6 * max(scale, 1.0)), (
            f"{family}: gradient of {n} differs by {(sup_grads[n] - full_grads[n]).abs().max().item():.3g} "
            f"(max |g| {scale:.3g})"
        )


def test_head_runs_only_on_supervised_rows(family_setup):
    _, model, batches = family_setup
    data = model.data_preprocessor(batches[0], True)
    labels = data["data"].labels
    n_supervised = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert 0 < n_supervised < labels.numel() // 4  # answers are a small part of each sequence
    seen: list[tuple[int, ...]] = []
    head = model.mllm.base_llm().get_output_embeddings()
    hook = head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        model.train()
        with torch.no_grad():
            model(**data, mode="loss")
    finally:
        hook.remove()
    assert seen == [(n_supervised, model.mllm.hidden_size)]


def test_positions_from_the_host_equal_the_device_ones_and_their_targets(family_setup):
    _, model, batches = family_setup
    batch = model.data_preprocessor(batches[1], True)["data"]
    labels = batch.labels
    assert torch.equal(batch.lm_positions, supervised_positions(labels))
    length = labels.shape[1]
    pos = batch.lm_positions
    # Every position predicts a labelled token of its own row, and every labelled token is covered.
    assert bool(((pos % length) < length - 1).all())
    targets = labels.flatten()[pos + 1]
    assert bool((targets != IGNORE_INDEX).all())
    assert torch.equal(targets.sort().values, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX].sort().values)
    hidden = torch.randn(*labels.shape, model.mllm.hidden_size)
    with torch.no_grad():
        on_host = model.lm_loss_supervised(hidden, labels, pos)
        derived = model.lm_loss_supervised(hidden, labels, None)
        plain = model.lm_loss(model.mllm.head_logits(hidden), labels)
    assert torch.equal(on_host, derived)
    assert abs(float(on_host) - float(plain)) <= LOSS_TOL


def test_no_labels_gives_zero_loss_with_the_head_in_the_graph(family_setup):
    _, model, _ = family_setup
    labels = torch.full((2, 7), IGNORE_INDEX)
    hidden = torch.randn(2, 7, model.mllm.hidden_size, requires_grad=True)
    loss = model.lm_loss_supervised(hidden, labels)
    assert float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert hidden.grad is not None and float(hidden.grad.abs().sum()) == 0.0
