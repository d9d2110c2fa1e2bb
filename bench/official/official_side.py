"""The official side of the parity check: build the official training Sa2VAModel, run one training forward.

Runs in its own process (the official code and the toolkit both name their package ``projects.sa2va``):

    PYTHONPATH=/tmp/official_overlay:bench/official/src .venv/bin/python bench/official/official_side.py WORK

``WORK/inputs.pt`` (written by ``parity.py``) holds the InternVL folder path, the SAM2 hydra overrides,
the LoRA settings, the full weights under official names and one batch. The model is built through the
official classes exactly as the official configs build it (``projects/sa2va/configs/sa2va_in30_2b.py``:
``Sa2VAModel`` + ``InternVLMLLM`` + ``SAM2TrainRunner`` + the mmdet-style ``CrossEntropyLoss`` /
``DiceLoss``), then every tensor is overwritten with the toolkit's weights (strict), the model is cast to
float32 and run twice: with ``loss_sample_points`` off (all pixels) and on (the point sampler reseeded
right before it draws). ``WORK/outputs.pt`` gets the per-component tensors and the gradients.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def _import_official(src: Path):
    """Import the official modules from ``src`` and check that they are the ones imported."""
    import projects.sa2va.models.sa2va as off_sa2va

    if not Path(off_sa2va.__file__).resolve().is_relative_to(src.resolve()):
        raise ImportError(f"projects.sa2va resolved to {off_sa2va.__file__}, not the official source {src}")
    return off_sa2va


def build_official(inp: dict, src: Path, work: Path):
    """The official training model (float32, every tensor loaded from ``inp['state']``)."""
    from peft import LoraConfig
    from third_parts.mmdet.models.losses import CrossEntropyLoss, DiceLoss
    from transformers import AutoTokenizer
    from xtuner.registry import BUILDER

    from projects.sa2va.models import InternVLMLLM, Sa2VAModel, SAM2TrainRunner

    folder = inp["folder"]
    tokenizer = dict(
        type=AutoTokenizer.from_pretrained,
        pretrained_model_name_or_path=folder,
        trust_remote_code=True,
        padding_side="right",
    )
    cfg = dict(
        type=Sa2VAModel,
        training_bs=1,
        special_tokens=["[SEG]"],
        pretrained_pth=None,
        loss_sample_points=False,
        num_points=inp["num_points"],
        frozen_sam2_decoder=False,
        mllm=dict(
            type=InternVLMLLM,
            model_path=folder,
            freeze_llm=True,
            freeze_visual_encoder=True,
            llm_lora=dict(
                type=LoraConfig,
                r=inp["lora"]["r"],
                lora_alpha=inp["lora"]["alpha"],
                lora_dropout=inp["lora"]["dropout"],
                bias="none",
                task_type="CAUSAL_LM",
                modules_to_save=["embed_tokens", "lm_head"],
            ),
        ),
        tokenizer=tokenizer,
        grounding_encoder=dict(
            type=SAM2TrainRunner,
            cfg_path="sam2_hiera_l.yaml",
            ckpt_path=inp["sam2_ckpt"],
            hydra_overrides_extra=inp["sam2_overrides"],
        ),
        loss_mask=dict(type=CrossEntropyLoss, use_sigmoid=True, reduction="mean", loss_weight=2.0),
        loss_dice=dict(
            type=DiceLoss,
            use_sigmoid=True,
            activate=True,
            reduction="mean",
            naive_dice=True,
            eps=1.0,
            loss_weight=0.5,
        ),
    )
    model = BUILDER.build(cfg)
    # Sa2VAChatModel (the official InternVL-family export class used as the InternVL remote code) carries a
    # Hiera-L SAM2 and a projection for its HF predict methods; the training forward never calls them.
    inner = model.mllm.model
    del inner.grounding_encoder, inner.text_hidden_fcs
    model.float()
    state = inp["state"]
    missing, unexpected = torch.nn.Module.load_state_dict(model, state, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"official model vs mapped toolkit weights: {len(missing)} missing {missing[:8]}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}"
        )
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    return model, trainable


def run_forward(model, off_sa2va, inp: dict, sample_points: bool) -> dict:
    """One training forward (+ backward); per-component tensors and the trainable gradients."""
    batch = inp["batch"]
    captured: dict = {}
    seg_id = model.seg_token_idx

    def fcs_hook(_m, _i, out):
        captured["seg_embeds"] = out[batch["input_ids"] == seg_id].detach().clone()

    h = model.text_hidden_fcs.register_forward_hook(fcs_hook)
    ge = model.grounding_encoder
    orig_inject = ge.inject_language_embd

    def inject(*a, **k):
        out = orig_inject(*a, **k)
        captured["mask_logits"] = out.detach().flatten(0, 1).clone()
        return out

    ge.inject_language_embd = inject
    orig_sampler = off_sa2va.get_uncertain_point_coords_with_randomness

    def sampler(*a, **k):
        torch.manual_seed(inp["point_seed"])
        coords = orig_sampler(*a, **k)
        captured["point_coords"] = coords.detach().clone()
        return coords

    off_sa2va.get_uncertain_point_coords_with_randomness = sampler
    model.loss_sample_points = sample_points
    try:
        data = {
            "pixel_values": [p for p in batch["pixel_values"]],
            "input_ids": batch["input_ids"],
            "position_ids": batch["position_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
            "g_pixel_values": [g for g in batch["g_pixel_values"]],
            "masks": [m for m in batch["masks"]],
            "frames_per_batch": [1] * len(batch["masks"]),
        }
        model.train()
        model.zero_grad(set_to_none=True)
        losses = model(data, mode="loss")
        total = sum(v for k, v in losses.items() if "loss" in k)
        total.backward()
    finally:
        h.remove()
        ge.inject_language_embd = orig_inject
        off_sa2va.get_uncertain_point_coords_with_randomness = orig_sampler
    out = {k: v.detach().clone() for k, v in losses.items()}
    out.update(captured)
    out["grads"] = {
        n: p.grad.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    return out


def main(work: Path) -> None:
    src = Path(os.environ.get("OFFICIAL_SRC", Path(__file__).resolve().parent / "src"))
    inp = torch.load(work / "inputs.pt", weights_only=False)
    torch.set_num_threads(inp.get("threads", 2))
    import torch.distributed as dist

    # The official MLLM forward calls torch.distributed.get_rank(): a one-process group.
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{work / 'pg'}", rank=0, world_size=1)
    os.chdir(work)  # SAM2TrainRunner reads its checkpoint from ./pretrained/sam2/
    off_sa2va = _import_official(src)
    import xtuner

    model, trainable = build_official(inp, src, work)
    results = {
        "xtuner_version": xtuner.__version__,
        "trainable": trainable,
        "keys": sorted(torch.nn.Module.state_dict(model)),
        "all_pixels": run_forward(model, off_sa2va, inp, sample_points=False),
        "points": run_forward(model, off_sa2va, inp, sample_points=True),
    }
    torch.save(results, work / "outputs.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: official_side.py WORK_DIR")
    main(Path(sys.argv[1]))
