"""Load trainable-weight files into a config's model strictly (as tools/convert_to_hf.py does); compare them.

python bench/gpu/check_trainable.py CONFIG NAME=FILE [NAME=FILE ...] [--cfg-options k=v ...]

Builds the config's model once, keeps its initial trainable tensors, then for each file: loads it with
``load_trainable_checkpoint`` (``checkpoint/trainable_pth.py``: ``torch.load(weights_only=True)``, every
trainable key present, no other key), and prints the tensor count, the dtypes and the largest change from
the initial weights. With two or more files, also the largest difference between each file and the first.
Exit status 1 when a file fails to load or leaves every tensor at its initial value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmengine.config import DictAction  # noqa: E402

from projects.sa2va.checkpoint.trainable_pth import load_trainable_checkpoint  # noqa: E402
from projects.sa2va.engine.builder import build_model  # noqa: E402


def trainable_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument(
        "files", nargs="+", help="NAME=FILE (a trainable .pth: ours, or *_trainable.pth of DeepSpeed)"
    )
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = p.parse_args(argv)
    model = build_model(args.config, None, cfg_options=args.cfg_options)
    init = trainable_copy(model)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in model.state_dict().values()})
    values = sum(v.numel() for v in init.values())
    print(f"{args.config}: {len(init)} trainable tensors, {values} values, {dtypes}")
    loaded: list[tuple[str, dict[str, torch.Tensor]]] = []
    bad = 0
    for arg in args.files:
        name, _, path = arg.partition("=") if "=" in arg else (Path(arg).name, "", arg)
        try:
            load_trainable_checkpoint(model, path)
        except Exception as e:  # report every file, then fail
            print(f"{name}: {path}: FAILED to load: {type(e).__name__}: {e}")
            bad += 1
            continue
        state = trainable_copy(model)
        change = max_abs_diff(state, init)
        print(f"{name}: {path}: loaded strictly, {len(state)} tensors, max |change from init| {change:.3e}")
        if change == 0.0:
            print(f"{name}: every tensor equals its initial value: nothing was trained")
            bad += 1
        loaded.append((name, state))
    for name, state in loaded[1:]:
        print(f"{name} vs {loaded[0][0]}: max |difference| {max_abs_diff(state, loaded[0][1]):.3e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
