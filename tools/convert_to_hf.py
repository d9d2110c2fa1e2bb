"""Export a trained Sa2VA to an official Hugging Face folder (LoRA merged) or a PEFT adapter folder.

    python tools/convert_to_hf.py CONFIG CHECKPOINT --save-path DIR [--adapter-only]
        [--max-shard-size 5GB] [--dtype bfloat16] [--cfg-options key=value ...]

CONFIG's ``path`` is the source HF folder (its config.json and remote-code *.py are carried over);
CHECKPOINT is a trainable-weights .pth from training (``work_dirs/<cfg>/iter_N.pth``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmengine.config import DictAction  # noqa: E402

from projects.sa2va.engine.export import convert_to_hf  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", help="trainable-weights .pth; 'none' exports the config's model as built")
    p.add_argument("--save-path", required=True)
    p.add_argument(
        "--adapter-only", action="store_true", help="write the PEFT adapter + other trained tensors"
    )
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None)
    args = p.parse_args(argv)
    ckpt = None if args.checkpoint.lower() == "none" else args.checkpoint
    out = convert_to_hf(
        args.config,
        ckpt,
        args.save_path,
        adapter_only=args.adapter_only,
        max_shard_size=args.max_shard_size,
        dtype=args.dtype,
        cfg_options=args.cfg_options,
    )
    print(f"wrote {args.save_path}: {out}")


if __name__ == "__main__":
    main()
