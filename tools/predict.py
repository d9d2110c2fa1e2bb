"""Predict masks for images with a trained Sa2VA model: a thin front-end to ``Sa2VAPredictor``.

    python tools/predict.py (--config CFG --checkpoint work_dirs/CFG/iter_N.pth | --hf HF_DIR) \\
        --images data/new/images [more images or folders] --prompt "Please segment the blood vessel." \\
        --out-dir predictions/ [--threshold T | --threshold-file best_threshold.json] \\
        [--batch-size N] [--device cpu|cuda] [--max-new-tokens 64] [--exact-normalisation]

Writes per image ``<stem>_mask{k}.png`` (0/255), ``<stem>_prob{k}.png`` (probability as 8-bit grey),
``<stem>_overlay.png``, and ``predictions.json`` for the run (see ``projects/sa2va/inference/io.py``).
``--hf`` builds from an official-layout Hugging Face folder (e.g. from ``tools/convert_to_hf.py``);
``--config`` then optionally names the model config to point at it, and ``--checkpoint`` a trainable
checkpoint to load on top. Every image is decoded completely before the model is built (a truncated or
corrupt one stops the run), and a prompt holding reserved markers (``[SEG]``, ``<image>``,
``<|im_start|>``, ...) is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.cli import add_predictor_args, add_threshold_args, predictor_kwargs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the Sa2VA config the checkpoint was trained with")
    p.add_argument("--hf", help="an official-layout Hugging Face Sa2VA folder (instead of --config)")
    p.add_argument("--checkpoint", help="trainable-weights checkpoint (iter_N.pth); omit to use the config's")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    p.add_argument("--prompt", default="Please segment the blood vessel.", help="question for every image")
    p.add_argument("--out-dir", required=True, help="output folder (created)")
    add_threshold_args(
        p,
        threshold_help="mask threshold (default 0.5)",
        file_help='JSON {"threshold": t}, e.g. best_threshold.json',
    )
    p.add_argument("--batch-size", type=int, default=1)
    add_predictor_args(p)
    args = p.parse_args(argv)
    if args.config is None and args.hf is None:
        p.error("give --config (with --checkpoint) or --hf")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from projects.sa2va.datasets.reserved_text import check_user_text
    from projects.sa2va.inference.io import (
        check_images_readable,
        list_images,
        read_image,
        save_prediction,
        write_predictions_json,
    )

    try:
        check_user_text(args.prompt, "--prompt")
        paths = list_images(args.images)
        check_images_readable(paths)  # decodes every image: a truncated one stops the run here
    except (OSError, ValueError) as e:
        print(f"predict.py: {e}", file=sys.stderr)
        return 2
    # Heavy imports (torch, transformers, mmengine) only once the images are known to be readable.
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    kwargs = predictor_kwargs(args)
    if args.hf is not None:
        predictor = Sa2VAPredictor.from_hf(args.hf, args.checkpoint, model_config=args.config, **kwargs)
    else:
        predictor = Sa2VAPredictor.from_config(args.config, args.checkpoint, **kwargs)
    out_dir = Path(args.out_dir)
    entries = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        try:
            images = [read_image(p) for p in chunk]
        except OSError as e:
            print(f"predict.py: {e}", file=sys.stderr)
            return 2
        preds = predictor.predict(images, args.prompt, max_new_tokens=args.max_new_tokens)
        for path, image, pred in zip(chunk, images, preds):
            entry = save_prediction(pred, image, out_dir, path.stem)
            entries.append({"image": str(path), **entry})
            print(f"{path}: {pred.num_masks} mask(s), {pred.text!r}")
    json_path = write_predictions_json(
        entries,
        out_dir,
        config=args.config,
        hf=args.hf,
        checkpoint=args.checkpoint,
        prompt=args.prompt,
        threshold=predictor.threshold,
        official_normalisation=predictor.official_normalisation,
    )
    print(f"wrote {len(entries)} prediction(s) to {out_dir} ({json_path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
