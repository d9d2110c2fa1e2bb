"""The teacher-forced training path of Sa2VAModel: what trains, what stays frozen, where [SEG] is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.sa2va.datasets.annotations import encode_mask_rle
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.models.sa2va import PART_PREFIXES, part_of
from projects.sa2va.structures import Sa2VABatch
from tests.tiny import build_tiny_dataset, build_tiny_model

# Trainable in the reference recipe (the whole SAM2 mask decoder) but outside every loss's graph: the IoU
# head only ranks the 3 candidate masks (argmax), the object-score head is not used by Sa2VA, and the
# single-mask hypernetwork (index 0) predicts the mask that multimask output discards.
NO_GRAD_TRAINABLE = (
    "sam_mask_decoder.iou_prediction_head.",
    "sam_mask_decoder.pred_obj_score_head.",
    "sam_mask_decoder.output_hypernetworks_mlps.0.",
)


def batch_of(dataset, indices) -> Sa2VABatch:
    return sa2va_collate([dataset[i] for i in indices])["data"]


def train_steps(
    model, batch, steps: int, lr: float = 1e-3, weight_decay: float = 0.0, got_grad: set | None = None
) -> list[dict]:
    """AdamW steps on one batch; ``got_grad`` collects the names of parameters with a nonzero gradient."""
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    history = []
    model.train()
    for _ in range(steps):
        losses = model(batch, mode="loss")
        opt.zero_grad()
        sum(losses.values()).backward()
        if got_grad is not None:
            got_grad.update(
                n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)
            )
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def test_parts_cover_every_parameter(tiny_model_and_cfg):
    model, _ = tiny_model_and_cfg
    seen = {part_of(n) for n, _ in model.named_parameters()}
    assert seen == set(PART_PREFIXES) - {"mask_upsampler"}  # optional part, absent unless configured


def test_trainable_set_matches_the_recipe(tiny_model_and_cfg):
    model, _ = tiny_model_and_cfg
    for name, p in model.named_parameters():
        part = part_of(name)
        if part == "llm":
            expect = "lora_A" in name or "lora_B" in name or "modules_to_save" in name
        else:
            expect = part in ("mlp1", "sam2_mask_decoder", "text_hidden_fcs")
        assert p.requires_grad == expect, name
        if p.requires_grad:
            assert p.dtype == torch.float32, name
    llm_trainable = [n for n, p in model.named_parameters() if p.requires_grad and part_of(n) == "llm"]
    lora = [n for n in llm_trainable if "lora_" in n]
    # 2 layers x 7 linear layers x (A, B); never the head.
    assert len(lora) == 2 * 7 * 2
    assert not any("lm_head" in n and "lora" in n for n in lora)
    assert sorted(
        n.split(".modules_to_save")[0].rsplit(".", 1)[-1] for n in llm_trainable if "modules_to_save" in n
    ) == [
        "embed_tokens",
        "lm_head",
    ]


def test_optimiser_steps_change_exactly_the_trainable_tensors(tiny_dataset):
    model, _ = build_tiny_model(seed=1)
    batch = batch_of(tiny_dataset, [0, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Two steps with weight decay 0: LoRA B starts at 0, so A only gets a gradient from the second step on.
    got_grad: set[str] = set()
    train_steps(model, batch, steps=2, weight_decay=0.0, got_grad=got_grad)
    candidates_changed = 0
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if not p.requires_grad:
            assert not changed, f"frozen tensor changed: {name}"
            continue
        if any(s in name for s in NO_GRAD_TRAINABLE):
            assert name not in got_grad and not changed, name
        elif "output_hypernetworks_mlps." in name:
            # Candidates 1-3: only the one with the highest predicted IoU per object gets a gradient.
            assert changed == (name in got_grad), name
            candidates_changed += changed
        else:
            assert name in got_grad, f"no gradient reached {name}"
            assert changed, f"trainable tensor unchanged: {name}"
    assert candidates_changed > 0


def test_seg_embedding_is_read_at_the_seg_positions(tiny_model_and_cfg):
    model, _ = tiny_model_and_cfg
    seg = model.seg_token_idx
    input_ids = torch.tensor([[5, 6, seg, 7, seg, 8], [9, seg, 10, 11, 12, 13]])
    hidden = torch.arange(2 * 6 * model.mllm.hidden_size, dtype=torch.float32).reshape(2, 6, -1) / 1000.0
    with torch.no_grad():
        embeds, counts = model.seg_embeddings(input_ids, hidden)
        expected = model.text_hidden_fcs(torch.stack([hidden[0, 2], hidden[0, 4], hidden[1, 1]]))
    assert counts == [2, 1]
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    # LISA-style option: the position before each [SEG].
    model.seg_hidden_shift = -1
    try:
        with torch.no_grad():
            embeds, _ = model.seg_embeddings(input_ids, hidden)
            expected = model.text_hidden_fcs(torch.stack([hidden[0, 1], hidden[0, 3], hidden[1, 0]]))
        torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    finally:
        model.seg_hidden_shift = 0


def test_seg_embedding_comes_from_the_final_normed_hidden_state(tiny_model_and_cfg, tiny_dataset):
    model, _ = tiny_model_and_cfg
    batch = batch_of(tiny_dataset, [0])
    model.eval()
    with torch.no_grad():
        out = model(batch, mode="tensor")
        base = model.mllm.base_llm()
        vit = model.mllm.encode_vit(batch.pixel_values)
        embeds = model.mllm.embed(batch.input_ids, model.mllm.project_vit(vit))
        ref = base.model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
    torch.testing.assert_close(out["hidden"], ref)
    pos = (batch.input_ids[0] == model.seg_token_idx).nonzero()[:, 0]
    assert len(pos) == 5
    with torch.no_grad():
        torch.testing.assert_close(out["seg_embeds"], model.text_hidden_fcs(ref[0, pos]))


def test_a_batch_without_seg_keeps_the_mask_path_at_zero_weight(tiny_dataset):
    model, _ = build_tiny_model(seed=2)
    batch = batch_of(tiny_dataset, [0, 1])
    # Replace every [SEG] by an ordinary token and drop the masks: a text-only batch.
    ids = batch.input_ids.clone()
    ids[ids == model.seg_token_idx] = 20
    batch.input_ids = ids
    batch.masks = [m[:0] for m in batch.masks]
    losses = model(batch, mode="loss")
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_dice"].detach()) == 0.0
    sum(losses.values()).backward()
    decoder_used = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad
        and part_of(n) in ("sam2_mask_decoder", "text_hidden_fcs")
        and not any(s in n for s in NO_GRAD_TRAINABLE)
    ]
    assert decoder_used and all(p.grad is not None for p in decoder_used)
    assert all(float(p.grad.abs().sum()) == 0.0 for p in decoder_used)


def test_seg_and_mask_count_mismatch_names_the_sample(tiny_model_and_cfg, tiny_dataset):
    model, _ = tiny_model_and_cfg
    batch = batch_of(tiny_dataset, [0])
    batch.masks = [batch.masks[0][:3]]
    with pytest.raises(ValueError, match=r"Image_01L\.jpg.*5 \[SEG\] tokens.*3 masks"):
        model(batch, mode="loss")


def write_disk_dataset(root: Path, n: int = 2, size: int = 128) -> Path:
    """``n`` noisy images with a yellow (target) and a blue disk each, annotated with RLE."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    records = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        # A yellow disk (the target) and a blue one of the same size: brightness alone cannot tell them apart.
        r = size // 6
        cy, cx = size // 3, size // 3 if i == 0 else 2 * size // 3
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        other = (yy - 2 * size // 3) ** 2 + (xx - (2 * size // 3 if i == 0 else size // 3)) ** 2 <= r**2
        img = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
        img[mask] = (230, 200, 60)
        img[other] = (60, 90, 230)
        Image.fromarray(img).save(root / "images" / f"disk{i}.png")
        records.append({"image": f"disk{i}.png", "text": ["yellow disk"], "mask": [[encode_mask_rle(mask)]]})
    ann = root / "annotations.json"
    ann.write_text(json.dumps(records))
    return ann


@pytest.mark.slow
def test_overfitting_two_images_lowers_the_mask_loss_and_raises_dice(tmp_path):
    model, cfg = build_tiny_model(seed=3)
    ann = write_disk_dataset(tmp_path)
    dataset = build_tiny_dataset(cfg, ann_file=str(ann), image_root=str(tmp_path / "images"))
    batch = batch_of(dataset, [0, 1])

    def dice_now() -> float:
        model.eval()
        preds = model(batch, mode="predict")
        model.train()
        scores = []
        for p in preds:
            pred, gt = p["probs"] > 0.5, p["gt"]
            inter = (pred & gt).sum().item()
            scores.append(2 * inter / max(1, pred.sum().item() + gt.sum().item()))
        return sum(scores) / len(scores)

    dice0 = dice_now()
    hist = train_steps(model, batch, steps=40, lr=3e-3)
    dice1 = dice_now()
    first = hist[0]["loss_mask"] + hist[0]["loss_dice"]
    last = hist[-1]["loss_mask"] + hist[-1]["loss_dice"]
    assert last < 0.5 * first, (first, last)
    assert hist[-1]["loss_lm"] < 0.5 * hist[0]["loss_lm"]
    assert dice1 > dice0 and dice1 > 0.95, (dice0, dice1)
