"""Training-forward parity with the official Sa2VA training code, on the CPU, per component.

Same weights, same batch, both in float32: the toolkit's tiny Sa2VA (``_base_/model_tiny.py``: InternViT
2x32, Qwen2 2x64 with LoRA, SAM2 Hiera 4x16 at 256 px) and the official training ``Sa2VAModel`` built
from the same tensors (:mod:`bench.official.official_side`, in its own process), on one real CHASE_DB1
sample (5 ``[SEG]`` masks). Compared: the LM loss, the ``[SEG]`` embeddings after ``text_hidden_fcs``, the
mask logits, the BCE and Dice mask losses (all pixels; and point-sampled, with the sampler reseeded right
before it draws on both sides), the sampled point coordinates, and the gradients of every trainable
tensor after ``backward()`` of the summed losses.

    bash bench/official/setup_official.sh /work/.mirror/bytedance+Sa2VA/repo   # once
    .venv/bin/python bench/official/parity.py [--work /tmp/sa2va_parity] [--json out.json]

Exit status 0 when every compared quantity is within ``--tol`` (1e-5) or is in :data:`EXPLAINED`; the
table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.official.bridge import (  # noqa: E402
    folder_state,
    hydra_overrides,
    internvl_folder_config,
    official_key,
    official_state,
    write_internvl_folder,
)

DEFAULT_SRC = ROOT / "bench/official/src"
DEFAULT_OVERLAY = Path("/tmp/official_overlay")
SAM2_CKPT = "tiny_sam2.pt"
POINT_SEED = 1234
# Differences above the tolerance that have a known cause (see bench/official/README.md for file:line
# on both sides); the run reports them as EXPLAINED instead of failing. Every other row must be <= --tol.
EXPLAINED: dict[str, str] = {
    "points/point_coords": "the same uncertain points in another order (the losses are means over them)",
}


def build_ours(seed: int):
    """The tiny toolkit model (fixed seed) with LoRA B and the PEFT ``modules_to_save`` copies perturbed,
    so that the adapters change the output (fresh LoRA B is zero) and the copies differ from the originals."""
    from tests.tiny import build_tiny_model

    # keep_originals: the base folder written for the official side holds the un-trained embedding / head.
    model, cfg = build_tiny_model(seed, lora=dict(keep_originals=True))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name or ".modules_to_save." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model, cfg


def one_batch(cfg, index: int):
    from projects.sa2va.datasets.collate import sa2va_collate
    from tests.tiny import build_tiny_dataset

    return sa2va_collate([build_tiny_dataset(cfg)[index]])["data"]


def official_batch(batch) -> dict:
    """The toolkit batch in the official collate's layout (float pixels; per-sample lists)."""
    from projects.sa2va.pixels import normalize_pixels

    tiles = normalize_pixels(batch.pixel_values).split(batch.num_tiles)
    length = batch.input_ids.shape[1]
    return {
        "pixel_values": list(tiles),
        "input_ids": batch.input_ids,
        "position_ids": torch.arange(length)[None].expand(batch.input_ids.shape[0], -1).contiguous(),
        "attention_mask": batch.attention_mask.bool(),
        "labels": batch.labels,
        # The official DirectResize output: float pixels in [0, 255]; SAM2TrainRunner normalises them.
        "g_pixel_values": list(batch.g_pixel_values.float()),
        "masks": [m.float() for m in batch.masks],
    }


def run_ours(model, batch, sample_points: bool) -> dict:
    """One training step's forward and backward through ``model(data, mode='loss')``."""
    import projects.sa2va.models.losses as losses_mod

    captured: dict = {}
    orig_ft = model.forward_tensors

    def forward_tensors(b, *a, **k):
        out = orig_ft(b, *a, **k)
        captured["seg_embeds"] = out["seg_embeds"].detach().clone()
        captured["mask_logits"] = out["mask_logits"].detach().clone()
        return out

    orig_sampler = losses_mod.uncertain_point_coords

    def sampler(*a, **k):
        torch.manual_seed(POINT_SEED)
        coords = orig_sampler(*a, **k)
        captured["point_coords"] = coords.detach().clone()
        return coords

    model.forward_tensors = forward_tensors
    losses_mod.uncertain_point_coords = sampler
    model.loss_mask.point_sampling = sample_points
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        data = model.data_preprocessor({"data": batch}, training=True)
        losses = model(**data, mode="loss")
        sum(losses.values()).backward()
    finally:
        del model.forward_tensors
        losses_mod.uncertain_point_coords = orig_sampler
    out = {k: v.detach().clone() for k, v in losses.items()}
    out.update(captured)
    out["grads"] = {
        official_key(n): p.grad.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    return out


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def grad_part(key: str) -> str:
    for part in ("lora_", "modules_to_save", "mlp1", "sam_mask_decoder", "text_hidden_fcs"):
        if part in key:
            return part.rstrip("_")
    return "other"


def point_rows(ours: dict, theirs: dict) -> list[tuple[str, float, str]]:
    """The point-sampled losses taken apart: which points, then the values at the official's points."""
    from projects.sa2va.models.losses import per_mask_bce, per_mask_dice, point_sample

    c_ours, c_off = ours["point_coords"], theirs["point_coords"].reshape(ours["point_coords"].shape)
    n, p, _ = c_ours.shape
    rows = [("points/point_coords", max_abs(c_ours, c_off), "")]
    # The uniformly drawn tail is drawn after the same number of random numbers on both sides.
    n_unc = int(0.75 * p)
    rows.append(
        ("points/point_coords random part", max_abs(c_ours[:, n_unc:], c_off[:, n_unc:]), f"{p - n_unc}/mask")
    )
    shared = sum(
        len(set(map(tuple, a.tolist())) & set(map(tuple, b.tolist())))
        for a, b in zip(c_ours[:, :n_unc], c_off[:, :n_unc])
    )
    rows[0] = ("points/point_coords", rows[0][1], f"{shared}/{n * n_unc} uncertain points shared")
    logits = theirs["mask_logits"]
    gt = torch.nn.functional.interpolate(theirs["gt_low"][:, None], size=logits.shape[-2:], mode="nearest")[
        :, 0
    ]
    lg, tg = point_sample(logits, c_off), point_sample(gt, c_off)
    bce = 2.0 * per_mask_bce(lg, tg).mean()
    dice = 0.5 * per_mask_dice(lg, tg).mean()
    for name, value in (("loss_mask", bce), ("loss_dice", dice)):
        rows.append(
            (
                f"points@official_coords/{name}",
                max_abs(value, theirs[name]),
                "toolkit sampler, official points",
            )
        )
    return rows


def compare(ours: dict, theirs: dict, mode: str) -> list[tuple[str, float, str]]:
    """(name, max abs difference, note) rows for one mode (``all_pixels`` or ``points``)."""
    rows = [
        (f"{mode}/lm_loss", max_abs(ours["loss_lm"], theirs["llm_loss"]), f"{float(theirs['llm_loss']):.6f}"),
        (
            f"{mode}/seg_embeds",
            max_abs(ours["seg_embeds"], theirs["seg_embeds"]),
            str(tuple(ours["seg_embeds"].shape)),
        ),
        (
            f"{mode}/mask_logits",
            max_abs(ours["mask_logits"], theirs["mask_logits"]),
            str(tuple(ours["mask_logits"].shape)),
        ),
        (
            f"{mode}/loss_mask",
            max_abs(ours["loss_mask"], theirs["loss_mask"]),
            f"{float(theirs['loss_mask']):.6f}",
        ),
        (
            f"{mode}/loss_dice",
            max_abs(ours["loss_dice"], theirs["loss_dice"]),
            f"{float(theirs['loss_dice']):.6f}",
        ),
    ]
    if mode == "points":
        rows += point_rows(ours, theirs)
    og, tg = ours["grads"], theirs["grads"]
    if set(og) != set(tg):
        raise KeyError(
            f"gradient sets differ: only toolkit {sorted(set(og) - set(tg))[:5]}, "
            f"only official {sorted(set(tg) - set(og))[:5]}"
        )
    parts: dict[str, float] = {}
    scale: dict[str, float] = {}
    for k in og:
        p = grad_part(k)
        parts[p] = max(parts.get(p, 0.0), max_abs(og[k], tg[k]))
        scale[p] = max(scale.get(p, 0.0), float(tg[k].abs().max()))
    for p in sorted(parts):
        rows.append((f"{mode}/grad/{p}", parts[p], f"max |grad| {scale[p]:.3g}"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="official checkout (setup_official.sh)")
    ap.add_argument(
        "--overlay", type=Path, default=DEFAULT_OVERLAY, help="timm + xtuner 0.1.23 overlay ('' = none)"
    )
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=0, help="index into data/chase_db1/annotations_train.json")
    ap.add_argument("--num-points", type=int, default=12544, help="points per mask (the official default)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--reuse", action="store_true", help="reuse WORK/outputs.pt of an earlier official run")
    ap.add_argument(
        "--write-keys",
        type=Path,
        default=None,
        help="write the official model's tensor names with a trainable flag (the test fixture)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the table here")
    args = ap.parse_args()
    if not (args.src / "projects/sa2va/models/sa2va.py").is_file():
        raise SystemExit(f"{args.src}: no official source; run bench/official/setup_official.sh first")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = args.work or Path(tempfile.mkdtemp(prefix="sa2va_parity_"))
    work.mkdir(parents=True, exist_ok=True)

    model, cfg = build_ours(args.seed)
    model.loss_mask.num_points = args.num_points
    batch = one_batch(cfg, args.sample)
    state = torch.nn.Module.state_dict(model)
    mllm = model.mllm
    folder = write_internvl_folder(
        work / "internvl_folder",
        config=internvl_folder_config(mllm, mllm.template),
        weights=folder_state(state),
        tokenizer=model.tokenizer,
        official_src=args.src,
    )
    prefix = "grounding_encoder.sam2_model."
    sam2_dir = work / "pretrained/sam2"
    sam2_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, sam2_dir / SAM2_CKPT)
    lora = model.lora_cfg
    inputs = {
        "folder": str(folder),
        "sam2_ckpt": SAM2_CKPT,
        "sam2_overrides": hydra_overrides(cfg.tiny_sam2_overrides),
        "lora": {"r": lora["r"], "alpha": lora["alpha"], "dropout": lora["dropout"]},
        "num_points": args.num_points,
        "point_seed": POINT_SEED,
        "state": official_state(state),
        "batch": official_batch(batch),
        "threads": torch.get_num_threads(),
    }
    torch.save(inputs, work / "inputs.pt")
    env = dict(os.environ)
    paths = [str(p) for p in (args.overlay, args.src) if str(p) and p.is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OFFICIAL_SRC"] = str(args.src)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = work / "official_side.log"
    rc = 0
    if not (args.reuse and (work / "outputs.pt").is_file()):
        with open(log, "w") as fh:
            rc = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("official_side.py")), str(work)],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
    if rc != 0:
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"official side failed (exit {rc}); log: {log}")
    theirs = torch.load(work / "outputs.pt", weights_only=False)
    if args.write_keys:
        trainable = set(theirs["trainable"])
        args.write_keys.write_text(
            "# official training Sa2VAModel (bytedance/Sa2VA, tiny shapes of _base_/model_tiny.py): "
            "tensor name, trainable; written by bench/official/parity.py --write-keys\n"
            + "".join(f"{k}\t{int(k in trainable)}\n" for k in theirs["keys"])
        )
    ours_keys = sorted(official_state(state))
    if ours_keys != theirs["keys"]:
        raise KeyError("mapped toolkit keys differ from the official model's keys")
    ours_trainable = sorted(official_key(n) for n, p in model.named_parameters() if p.requires_grad)
    if ours_trainable != theirs["trainable"]:
        diff = sorted(set(ours_trainable) ^ set(theirs["trainable"]))
        raise KeyError(f"trainable sets differ: {diff[:10]}")

    theirs["points"]["gt_low"] = inputs["batch"]["masks"][0]
    rows = []
    for mode, sample_points in (("all_pixels", False), ("points", True)):
        rows += compare(run_ours(model, batch, sample_points), theirs[mode], mode)
    bad = 0
    lines = [f"{'quantity':<44}{'max abs diff':>14}  {'status':<10} note"]
    for name, diff, note in rows:
        key = next((k for k in EXPLAINED if name.startswith(k)), None)
        status = "ok" if diff <= args.tol else ("EXPLAINED" if key else "DIFFERS")
        bad += status == "DIFFERS"
        lines.append(f"{name:<44}{diff:>14.3e}  {status:<10} {note}")
    print(
        f"official xtuner {theirs['xtuner_version']}; "
        f"{len(ours_keys)} tensors, {len(ours_trainable)} trainable"
    )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps([{"name": n, "max_abs_diff": d, "note": t} for n, d, t in rows], indent=1)
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
