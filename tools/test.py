"""Evaluate a trained Sa2VA checkpoint: Dice / IoU / clDice at 0.5 and at the best threshold, report, plots.

    python tools/test.py CONFIG CHECKPOINT --out-dir DIR [--ann-file A --image-root I]
        [--val-ann-file V [--val-image-root VI]] [--fov-masks DIR|auto [--fov-pattern P]]
        [--skip-existing] [--tile auto|on|off [--tile-size PX] [--tile-overlap 0.25]] [--flip-tta]
        [--launcher pytorch] [--cfg-options k=v ...]
    bash tools/dist.sh test CONFIG NGPUS CHECKPOINT --out-dir DIR ...      (one process per GPU)

CHECKPOINT is a trainable-weights ``.pth`` (``work_dirs/<cfg>/iter_N.pth``) or an exported Hugging
Face folder. Without ``--ann-file`` the config's test (else val) annotations are used. The threshold
is chosen on ``--val-ann-file`` when given, otherwise on the evaluated set itself (the report says
which). Writes report.json, per_image.csv, best_threshold.json, pr_curve.png, overlay_grid.png,
overlays/*.png and, next to a work-dir checkpoint, training_curves.png. See
projects/sa2va/evaluation/evaluate.py.

Results as they come: every sample's metric state goes to OUT/records/{test,val}/ and a line with its
Dice / IoU / precision / recall at 0.5 to OUT/records/{test,val}.jsonl as soon as its batch is done;
OUT/records/run_settings.json holds the digests of the model config and checkpoint and the precision.
A killed run keeps them: rerun with --skip-existing and only the samples without an intact record are
run (a missing or altered state file, or a changed annotation record or image, is run again); the report
covers every sample and its "reused" field says how many came from the earlier run. Other settings than
the stored ones are refused. A progress bar (count, rate, ETA) goes to stderr.

Large images (--tile auto): the masks of an image larger than the model input (the SAM2 input size,
or --tile-size) are computed window by window at full resolution (each window teacher-forced like a
whole image, windows overlapping by --tile-overlap, blended with raised-cosine weights); --flip-tta
averages every view with its left-right mirror. See projects/sa2va/evaluation/tiled.py.

Field of view (--fov-masks): the same predictions are also scored with the pixels outside each image's
field of view left out, as the retinal literature reports. DIR: one mask per image, found by
--fov-pattern (default "{stem}_mask.*", e.g. 21_training_mask.gif for 21_training.tif; named fields of
--fov-image-pattern may be used, see projects/sa2va/datasets/pairing.py). auto: the image's grey level
(ITU-R 601 luma, 0..255) > 10, holes filled. The FOV figures go to OUT/fov/ (report.json,
per_image.csv, best_threshold.json: the threshold chosen inside the FOV of --val-ann-file, else of the
evaluated set) and to the "fov" section of OUT/report.json; the whole-image figures are unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmengine.config import DictAction
from torch.distributed.elastic.multiprocessing.errors import record

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.engine.evaluate_checkpoint import SettingsMismatchError, evaluate_checkpoint  # noqa: E402
from projects.sa2va.evaluation.fov import FovSource  # noqa: E402
from projects.sa2va.tiling import add_tiling_args, tiling_kwargs  # noqa: E402

#: Options that do not change a sample's predicted probabilities: left out of the compared run settings
#: (the config and checkpoint are compared by content digest, --fp32 as the precision; the annotation
#: records and images by a digest per sample; the threshold and FOV figures are recomputed from the
#: samples at the end of every run).
NOT_COMPARED = frozenset(
    {
        "config", "checkpoint", "out_dir", "ann_file", "image_root", "val_ann_file", "val_image_root",
        "fov_masks", "fov_pattern", "fov_image_pattern", "fov", "batch_size", "num_workers",
        "max_overlays", "fp32", "launcher", "cfg_options", "skip_existing",
    }
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="Sa2VA config file")
    parser.add_argument("checkpoint", help="trainable-weights .pth or exported HF folder")
    parser.add_argument("--out-dir", required=True, help="folder for the report, threshold file and plots")
    parser.add_argument("--ann-file", help="annotations to evaluate (default: the config's test/val set)")
    parser.add_argument("--image-root", help="image folder of --ann-file (default: the config's)")
    parser.add_argument(
        "--val-ann-file", help="annotations the threshold is chosen on (default: the test set)"
    )
    parser.add_argument("--val-image-root", help="image folder of --val-ann-file (default: --image-root)")
    parser.add_argument(
        "--fov-masks", help="score inside the field of view too: a folder of FOV masks, or 'auto'"
    )
    parser.add_argument("--fov-pattern", help="FOV mask file name pattern (default '{stem}_mask.*')")
    parser.add_argument("--fov-image-pattern", help="image name pattern whose fields --fov-pattern uses")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--max-overlays", type=int, default=8, help="per-image overlay PNGs (worst first)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="reuse the samples already evaluated in --out-dir by an earlier run with the same settings",
    )
    add_tiling_args(parser)
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides key=value")
    args = parser.parse_args(argv)
    args.fov = None
    if args.fov_masks is not None:
        try:
            args.fov = FovSource.parse(args.fov_masks, args.fov_pattern, args.fov_image_pattern)
        except ValueError as err:
            parser.error(str(err))
    elif args.fov_pattern or args.fov_image_pattern:
        parser.error("--fov-pattern/--fov-image-pattern need --fov-masks DIR")
    return args


@record
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.config).is_file():
        raise SystemExit(f"test.py: config file {args.config} not found")
    if not Path(args.checkpoint).exists():
        raise SystemExit(f"test.py: checkpoint {args.checkpoint} not found")
    try:
        evaluate_checkpoint(
            args.config,
            args.checkpoint,
            out_dir=args.out_dir,
            ann_file=args.ann_file,
            image_root=args.image_root,
            val_ann_file=args.val_ann_file,
            val_image_root=args.val_image_root,
            launcher=args.launcher,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            max_overlays=args.max_overlays,
            amp=not args.fp32,
            cfg_options=args.cfg_options,
            fov=args.fov,
            skip_existing=args.skip_existing,
            run_settings={k: v for k, v in sorted(vars(args).items()) if k not in NOT_COMPARED},
            **tiling_kwargs(args),
        )
    except SettingsMismatchError as e:
        raise SystemExit(f"test.py: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
