"""Train a Sa2VA config: a thin front-end to xtuner's train tool (``xtuner.tools.train``).

    python tools/train.py projects/sa2va/configs/sa2va_finetune.py [--work-dir DIR] [--resume auto|PATH]
        [--deepspeed zero2|zero3|FILE.json] [--cfg-options key=value ...] [--launcher pytorch]

Several GPUs or nodes: ``bash tools/dist.sh train CONFIG NGPUS``. Differences from calling xtuner
directly: ``--resume auto`` resumes from the latest checkpoint of the work dir, the few classes
that mmengine pickles into checkpoints are allow-listed for ``torch.load(weights_only=True)``, and
``--deepspeed`` runs under :class:`~projects.sa2va.engine.flexible_runner.Sa2VAFlexibleRunner` with the
config's autocast precision (:mod:`projects.sa2va.engine.deepspeed_config`).
The exit status is non-zero whenever training fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.checkpoint.safe_load import mmengine_safe_globals  # noqa: E402


def translate_args(argv: list[str]) -> list[str]:
    """Map our extra options onto xtuner's: ``--resume auto`` -> ``--cfg-options resume=True``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--resume" and i + 1 < len(argv) and argv[i + 1] == "auto":
            out += ["--cfg-options", "resume=True"]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


class ConfigError(ValueError):
    """The config file cannot be parsed."""


def check_config(path: str):
    """Parse the config once before the (slow) xtuner import; the error names the file."""
    from mmengine.config import Config

    try:
        return Config.fromfile(path)
    except Exception as e:
        raise ConfigError(f"{path}: cannot load the config: {type(e).__name__}: {e}") from e


def deepspeed_value_index(argv: list[str]) -> int | None:
    """Index of the ``--deepspeed`` option in ``argv`` (``--deepspeed V`` or ``--deepspeed=V``), or None."""
    for i, a in enumerate(argv):
        if a == "--deepspeed" or a.startswith("--deepspeed="):
            return i
    return None


def prepare_deepspeed(argv: list[str], cfg) -> list[str]:
    """Replace the ``--deepspeed`` value by a JSON whose precision follows the config's optim_wrapper
    (:func:`projects.sa2va.engine.deepspeed_config.write_deepspeed_config`); names such as ``zero2``
    mean the toolkit's files. The written file is removed at exit."""
    import argparse
    import atexit
    import os

    from mmengine.config import DictAction

    from projects.sa2va.engine.deepspeed_config import DeepSpeedConfigError, write_deepspeed_config

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--deepspeed")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    known, _ = parser.parse_known_args(argv[1:])
    if not known.deepspeed:
        raise SystemExit("train.py: --deepspeed needs a value (zero2, zero3 or a JSON file)")
    if known.cfg_options:
        cfg.merge_from_dict(known.cfg_options)
    try:
        prepared = write_deepspeed_config(known.deepspeed, dict(cfg.optim_wrapper), torch.cuda.is_available())
    except DeepSpeedConfigError as e:
        raise SystemExit(f"train.py: {e}") from e
    atexit.register(lambda: prepared.path.unlink(missing_ok=True))
    if os.environ.get("RANK", "0") == "0":
        autocast = prepared.dtype or "off (fp32)"
        print(f"train.py: DeepSpeed config {prepared.source}, autocast {autocast}", flush=True)
        for note in prepared.notes:
            print(f"train.py: {prepared.source}: {note}", flush=True)
    i = deepspeed_value_index(argv)
    width = 1 if argv[i].startswith("--deepspeed=") else 2
    return [*argv[:i], "--deepspeed", str(prepared.path), *argv[i + width :]]


def use_sa2va_flexible_runner() -> None:
    """xtuner's ``--deepspeed`` sets ``runner_type = "FlexibleRunner"``: make that name build
    :class:`~projects.sa2va.engine.flexible_runner.Sa2VAFlexibleRunner` (hooks, rank-0 logs, weights file)."""
    from mmengine.registry import RUNNERS

    from projects.sa2va.engine.flexible_runner import Sa2VAFlexibleRunner

    RUNNERS.register_module(name="FlexibleRunner", module=Sa2VAFlexibleRunner, force=True)
    from projects.sa2va.engine.runner import init_gloo_without_gpu

    init_gloo_without_gpu()  # as Sa2VARunner does (the strategy is set up before any runner code runs)


@record
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python tools/train.py CONFIG [xtuner train options]")
    if not Path(argv[0]).is_file():
        raise SystemExit(f"train.py: config file {argv[0]} not found")
    cfg = check_config(argv[0])
    torch.serialization.add_safe_globals(mmengine_safe_globals())
    if deepspeed_value_index(argv) is not None:
        argv = prepare_deepspeed(argv, cfg)
        use_sa2va_flexible_runner()
    from xtuner.tools import train as xtuner_train

    sys.argv = ["xtuner-train", *translate_args(argv)]
    xtuner_train.main()


if __name__ == "__main__":
    main()
