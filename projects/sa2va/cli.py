"""Command-line pieces shared by the tools that build a :class:`Sa2VAPredictor` from a config.

Used by ``tools/predict.py`` and ``tools/demo_app.py``. Import-light (argparse only): the tools check
their arguments and inputs before torch, transformers and mmengine are imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["add_predictor_args", "add_threshold_args", "parse_cfg_options", "predictor_kwargs"]


def parse_cfg_options(options: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a dict for ``Config.merge_from_dict``, parsed by mmengine's ``DictAction``.

    mmengine is imported here, not at argument parsing, so that a tool checks its inputs first.
    """
    if not options:
        return {}
    from mmengine.config import DictAction

    parsed = argparse.Namespace(cfg_options={})
    DictAction(option_strings=["--cfg-options"], dest="cfg_options")(None, parsed, list(options))
    return parsed.cfg_options


def add_threshold_args(parser: argparse.ArgumentParser, *, threshold_help: str, file_help: str) -> None:
    """``--threshold T`` | ``--threshold-file JSON`` (mutually exclusive; both default to ``None``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help=threshold_help)
    group.add_argument("--threshold-file", help=file_help)


def add_predictor_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--max-new-tokens``, ``--max-tiles``, ``--exact-normalisation``, ``--seed``,
    ``--cfg-options``: the predictor settings :func:`predictor_kwargs` reads."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--max-tiles",
        type=int,
        help="InternVL tiles per image (default: the model's processor's: the config's, or the HF folder's)",
    )
    parser.add_argument(
        "--exact-normalisation",
        action="store_true",
        help="SAM2 input with the exact ImageNet constants (as training) instead of the official "
        "predictor's bf16-rounded ones",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="torch seed before building the model (default: the one training built with, the "
        "checkpoint's recorded seed, else the config's randomness.seed; it decides the parts no file holds)",
    )
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")


def predictor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``Sa2VAPredictor.from_config`` / ``from_hf`` from :func:`add_threshold_args`
    and :func:`add_predictor_args` options (``max_tiles`` only when given: the config's otherwise).
    Imports mmengine when ``--cfg-options`` were given."""
    kwargs: dict[str, Any] = dict(
        device=args.device,
        cfg_options=parse_cfg_options(args.cfg_options),
        seed=args.seed,
        threshold=args.threshold,
        threshold_file=args.threshold_file,
        official_normalisation=not args.exact_normalisation,
    )
    if args.max_tiles is not None:
        kwargs["max_tiles"] = args.max_tiles
    return kwargs
