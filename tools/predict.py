"""Predict masks for images with a trained Sa2VA model: a thin front-end to ``Sa2VAPredictor``.

    python tools/predict.py (--config CFG --checkpoint work_dirs/CFG/iter_N.pth | --hf HF_DIR) \\
        --images data/new/images [more images or folders] --prompt "Please segment the blood vessel." \\
        --out-dir predictions/ [--threshold T | --threshold-file best_threshold.json] \\
        [--batch-size N] [--device cpu|cuda] [--max-new-tokens 64] [--exact-normalisation] \\
        [--skip-existing] [--tile auto|on|off [--tile-size PX] [--tile-overlap 0.25]] [--flip-tta] \\
        [--id-image]

Writes per image ``<stem>_mask{k}.png`` (0/255), ``<stem>_prob{k}.png`` (probability as 8-bit grey),
``<stem>_overlay.png``, with ``--id-image`` ``<stem>_ids.png`` (one instance-ID image: mask ``k`` -> id
``k + 1``, 0 elsewhere), and ``predictions.json`` for the run: per image the answer, per mask the object
its ``[SEG]`` names in the answer (``objects``; ``null`` for a bare ``[SEG]``), the file names (see
``projects/sa2va/inference/io.py``).
Each image's files are written as soon as it is predicted, and a line is appended to
``predictions.jsonl`` (its files' SHA-256); the settings that decide the masks (model config, checkpoint
and HF folder contents, prompt, threshold, tiling, ...) go to ``run_settings.json``. A run that is
killed keeps what it did: rerun it with ``--skip-existing`` and only the images without an intact
record are predicted (a record whose files are missing or altered, or whose image changed, is
recomputed); ``predictions.json`` then lists every image and says how many were reused. Other
settings than the stored ones are refused. A progress bar (count, rate, ETA) goes to stderr.
``--tile auto`` predicts the masks of an image larger than the model input (the SAM2 input size, or
``--tile-size``) window by window at full resolution, windows overlapping by ``--tile-overlap`` and
blended with raised-cosine weights; ``--flip-tta`` averages each view with its left-right mirror (see
``projects/sa2va/tiling.py``).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.cli import (  # noqa: E402
    add_predictor_args,
    add_threshold_args,
    parse_cfg_options,
    predictor_kwargs,
)
from projects.sa2va.tiling import add_tiling_args, tiling_kwargs  # noqa: E402

#: Arguments that do not change the masks: left out of the compared run settings.
NOT_COMPARED = frozenset({"images", "out_dir", "batch_size", "skip_existing"})


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
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="reuse the images already predicted in --out-dir by an earlier run with the same settings "
        "(their records and files are checked; anything missing or altered is predicted again)",
    )
    p.add_argument(
        "--id-image",
        action="store_true",
        help="also write <stem>_ids.png per image: mask k -> id k+1, 0 where no mask is (a pixel in several "
        "masks gets the most probable one's id); 8-bit grey, 16-bit above 255 masks",
    )
    add_predictor_args(p)
    add_tiling_args(p)
    args = p.parse_args(argv)
    if args.config is None and args.hf is None:
        p.error("give --config (with --checkpoint) or --hf")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide the masks, as stored in ``run_settings.json`` and compared by
    ``--skip-existing``: every argument except :data:`NOT_COMPARED`, with the config, HF folder and
    checkpoint replaced by digests of their contents, the threshold resolved, the device by its type.
    """
    from projects.sa2va.engine.builder import load_config
    from projects.sa2va.inference.predictor import load_threshold
    from projects.sa2va.run_records import config_digest, path_digest

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_COMPARED}
    cfg_options = parse_cfg_options(args.cfg_options)
    if args.config is not None:
        settings["config"] = config_digest(load_config(args.config, cfg_options))
    for name in ("hf", "checkpoint"):
        if settings[name] is not None:
            settings[name] = path_digest(settings[name])
    settings.pop("threshold_file")
    if args.threshold_file is not None:
        settings["threshold"] = load_threshold(args.threshold_file)
    elif args.threshold is None:
        settings["threshold"] = 0.5
    settings["device"] = str(args.device).split(":")[0]
    return settings


def _log(message: str) -> None:
    """A line on stdout that does not break the progress bar on stderr."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from projects.sa2va.datasets.reserved_text import check_user_text
    from projects.sa2va.inference.io import (
        PREDICTIONS_FILE,
        PREDICTIONS_RECORDS,
        RUN_SETTINGS_FILE,
        check_images_readable,
        entry_files,
        list_images,
        read_image,
        save_prediction,
        write_predictions_json,
    )
    from projects.sa2va.run_records import (
        RunRecords,
        SettingsMismatchError,
        check_settings,
        file_digest,
        iter_batches,
        progress_bar,
    )

    try:
        check_user_text(args.prompt, "--prompt")
        paths = list_images(args.images, report=lambda m: print(f"predict.py: {m}", file=sys.stderr))
        check_images_readable(paths)  # decodes every image: a truncated one stops the run here
    except (OSError, ValueError) as e:
        print(f"predict.py: {e}", file=sys.stderr)
        return 2
    # Heavy imports (torch, transformers, mmengine) only once the images are known to be readable.
    out_dir = Path(args.out_dir)
    try:
        settings = run_settings(args)
        out_dir.mkdir(parents=True, exist_ok=True)
        check_settings(
            out_dir / RUN_SETTINGS_FILE,
            settings,
            skip_existing=args.skip_existing,
            info={"config": args.config, "hf": args.hf, "checkpoint": args.checkpoint},
        )
    except (OSError, ValueError) as e:  # SettingsMismatchError is a ValueError
        kind = "" if isinstance(e, SettingsMismatchError) else "cannot read the run settings: "
        print(f"predict.py: {kind}{e}", file=sys.stderr)
        return 2
    (out_dir / PREDICTIONS_FILE).unlink(missing_ok=True)  # rewritten at the end, for every image
    records = RunRecords(out_dir, PREDICTIONS_RECORDS, fresh=not args.skip_existing)
    inputs = {p.stem: file_digest(p) for p in paths}  # output files are named by stem (unique)
    done = records.reusable(inputs) if args.skip_existing else {}
    todo = [p for p in paths if p.stem not in done]
    predictor = None
    if todo:
        from projects.sa2va.inference.predictor import Sa2VAPredictor

        kwargs = {**predictor_kwargs(args), **tiling_kwargs(args)}
        if args.hf is not None:
            predictor = Sa2VAPredictor.from_hf(args.hf, args.checkpoint, model_config=args.config, **kwargs)
        else:
            predictor = Sa2VAPredictor.from_config(args.config, args.checkpoint, **kwargs)
        if predictor.threshold != settings["threshold"]:  # the stored settings must describe the run
            raise RuntimeError(f"predictor threshold {predictor.threshold} != {settings['threshold']}")
    bar = progress_bar(len(paths), desc="predict", initial=len(paths) - len(todo))
    with bar:
        for chunk in iter_batches(todo, args.batch_size):
            try:
                images = [read_image(p) for p in chunk]
            except OSError as e:
                print(f"predict.py: {e}", file=sys.stderr)
                return 2
            preds = predictor.predict(images, args.prompt, max_new_tokens=args.max_new_tokens)
            for path, image, pred in zip(chunk, images, preds):
                entry = {
                    "image": str(path),
                    **save_prediction(pred, image, out_dir, path.stem, id_image=args.id_image),
                }
                files = {name: file_digest(out_dir / name) for name in entry_files(entry)}
                records.append(path.stem, inputs[path.stem], entry, files)
                done[path.stem] = entry
                _log(f"{path}: {pred.num_masks} mask(s), {pred.text!r}")
                bar.update(1)
    entries = [{**done[p.stem], "image": str(p)} for p in paths]
    reused = len(paths) - len(todo)
    json_path = write_predictions_json(
        entries,
        out_dir,
        config=args.config,
        hf=args.hf,
        checkpoint=args.checkpoint,
        prompt=args.prompt,
        threshold=settings["threshold"],
        official_normalisation=not args.exact_normalisation,
        reused=reused,
    )
    print(f"wrote {len(entries)} prediction(s) to {out_dir} ({json_path.name})")
    if args.skip_existing:
        print(f"--skip-existing: {reused} reused from an earlier run, {len(todo)} predicted now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
