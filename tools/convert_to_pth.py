"""Official Sa2VA Hugging Face folder -> a reference-style full .pth state.

    python tools/convert_to_pth.py HF_DIR OUT.pth

The .pth holds every tensor under the reference training names (``mllm.model.vision_model.*``,
``mllm.model.language_model.*`` without LoRA, ``grounding_encoder.sam2_model.*``, ``text_hidden_fcs.*``).
Use it as ``model.pretrained_pth`` in any config of the same architecture (the model then starts from
exactly these weights, LoRA at its zero-delta initialisation), or in the reference code base.
To simply continue from an HF folder, point the config's ``path`` at it instead: no conversion needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.checkpoint.convert import convert_to_reference_pth  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir")
    p.add_argument("out")
    args = p.parse_args(argv)
    n = convert_to_reference_pth(args.hf_dir, args.out)
    print(f"wrote {n} tensors to {args.out}")


if __name__ == "__main__":
    main()
