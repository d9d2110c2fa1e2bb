"""Start a training run from a config: what ``tools/train.py`` and ``bash tools/dist.sh train`` call.

:func:`train` reads the config (:func:`~projects.sa2va.engine.builder.load_config`: ``--cfg-options``
merged, a config copied out of the package finds its ``_base_`` files), applies the launch options and
builds the runner the strategy asks for:

* without ``deepspeed``: the config's ``runner_type`` (:class:`~projects.sa2va.engine.runner.Sa2VARunner`
  in every shipped config; mmengine's ``Runner`` for a config without one);
* with ``deepspeed``: :class:`~projects.sa2va.engine.flexible_runner.Sa2VAFlexibleRunner` with xtuner's
  ``DeepSpeedStrategy`` (kept from xtuner: it moves the data preprocessor to the device under ZeRO-3 and
  holds the ``HfDeepSpeedConfig``), the JSON prepared by
  :func:`~projects.sa2va.engine.deepspeed_config.prepare_deepspeed_config` (precision from the config's
  ``optim_wrapper``), and ``DeepSpeedOptimWrapper`` around the config's optimizer.

Either runner builds the model through :func:`~projects.sa2va.engine.builder.construct_model`. The launch
options behave as xtuner 0.2.0's ``tools/train.py`` made them behave (this module replaces it; the
steps of it that do nothing for Sa2VA configs are left out: HF-Trainer configs, ``model_resource``
downloads, xtuner's config-name lookup, and its varlen-attention / sequence-parallel checks, which concern
xtuner's own models):

* ``work_dir``: the argument, else the config's ``work_dir``, else ``./work_dirs/<config name>``;
* ``resume``: ``"auto"`` continues from the newest intact checkpoint of the work dir (``resume=True``);
  a path resumes from that checkpoint and builds the model with the seed recorded in it;
* ``seed``: replaces ``randomness.seed`` (not when resuming from a path: the checkpoint's seed wins);
* ``launcher``: ``"none"`` or ``"pytorch"`` (``torchrun``; ``LOCAL_RANK`` is set to 0 when absent), also
  ``"slurm"`` / ``"mpi"`` as mmengine knows them.

The DeepSpeed settings that the config already has and a JSON leaves at ``"auto"`` (gradient accumulation,
micro batch, clipping) come from the config; a JSON value that differs is replaced by the config's, with a
warning, as xtuner did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.config.lazy import LazyObject
from mmengine.logging import MMLogger
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint.safe_load import load_checkpoint_file, mmengine_safe_globals
from .builder import load_config

__all__ = ["LAUNCHERS", "apply_launch_options", "build_runner", "deepspeed_settings", "train"]

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
#: The oldest DeepSpeed that xtuner 0.2.0's strategy supports.
MIN_DEEPSPEED = "0.12.3"


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def checkpoint_seed(path: str | Path) -> int | None:
    """The seed a checkpoint recorded (``meta['seed']``), read with the allow-listed loader.

    A DeepSpeed checkpoint directory is read through its ``*_trainable.pth`` sibling when that records a
    seed, else through DeepSpeed's first model-states file; None (with a warning) when neither can be read.
    """
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        from ..checkpoint.safe_load import trainable_file_name

        candidates = [path.parent / trainable_file_name(path.name)]
        try:
            from deepspeed.utils.zero_to_fp32 import get_model_state_files

            candidates += [Path(p) for p in get_model_state_files(str(path))[:1]]
        except (ImportError, FileNotFoundError, ValueError):
            pass
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            meta = load_checkpoint_file(candidate).get("meta")
        except Exception as e:  # refused or damaged: the resume itself reports it
            _logger().warning(f"{candidate}: cannot read the recorded seed ({type(e).__name__}: {e})")
            continue
        if isinstance(meta, dict) and meta.get("seed") is not None:
            return int(meta["seed"])
    return None


def apply_launch_options(
    cfg: Config,
    *,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
    launcher: str = "none",
    seed: int | None = None,
) -> Config:
    """Set ``work_dir``, ``resume`` / ``load_from``, ``randomness.seed`` and ``launcher`` in ``cfg`` (in
    place; see the module docstring for the rules). Returns ``cfg``.

    Raises:
        ValueError: an unknown launcher. FileNotFoundError: a resume path that does not exist.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    resume_path = None if resume in (None, "auto") else Path(resume)
    if resume_path is not None and not resume_path.exists():
        raise FileNotFoundError(f"--resume {resume_path}: no such checkpoint")
    if resume_path is None:
        if seed is not None:
            cfg.merge_from_dict(dict(randomness=dict(seed=seed)))
            _logger().info(f"Set the random seed to {seed}.")
    else:
        recorded = checkpoint_seed(resume_path)
        if recorded is not None:
            cfg.merge_from_dict(dict(randomness=dict(seed=recorded)))
            if seed is not None and seed != recorded:
                _logger().warning(
                    f"{resume_path} was trained with seed {recorded}, --seed says {seed}: using {recorded}"
                )
            else:
                _logger().info(f"Set the random seed to {recorded} (recorded in {resume_path}).")
        elif seed is not None:
            cfg.merge_from_dict(dict(randomness=dict(seed=seed)))
    os.environ.setdefault("LOCAL_RANK", "0")
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("./work_dirs") / Path(cfg.filename or "config").stem)
    if resume == "auto":
        cfg.resume = True
    elif resume_path is not None:
        cfg.resume = True
        cfg.load_from = str(resume_path)
    return cfg


def _differs(name: str, json_value: Any, config_value: Any) -> None:
    if json_value != "auto" and json_value != config_value:
        _logger().warning(
            f"Mismatch on {name}: config {config_value}, DeepSpeed JSON {json_value}. Set to {config_value}"
        )


def deepspeed_settings(cfg: Config, value: str, cuda: bool | None = None) -> dict[str, Any]:
    """The ``strategy`` dict of a ``--deepspeed`` run of ``cfg`` (``value``: ``zero1|2|3``, xtuner's
    ``deepspeed_zero*`` names or a JSON file), logging the prepared JSON's source and changes on rank 0.

    Raises:
        DeepSpeedConfigError: ``value`` names no file, or the file is not a DeepSpeed JSON object.
    """
    from .deepspeed_config import (
        autocast_dtype,
        prepare_deepspeed_config,
        read_deepspeed_json,
        resolve_deepspeed_file,
    )

    cuda = torch.cuda.is_available() if cuda is None else cuda
    source = resolve_deepspeed_file(value)
    dtype = autocast_dtype(dict(cfg.optim_wrapper), cuda)
    ds_cfg, notes = prepare_deepspeed_config(read_deepspeed_json(source), dtype)
    if _is_rank0():
        _logger().info(f"DeepSpeed config {source}, autocast {dtype or 'off (fp32)'}")
        for note in notes:
            _logger().info(f"{source}: {note}")
    accumulation = cfg.optim_wrapper.get("accumulative_counts", 1)
    _differs("gradient_accumulation_steps", ds_cfg.get("gradient_accumulation_steps", "auto"), accumulation)
    batch = cfg.train_dataloader.batch_size
    _differs("train_micro_batch_size_per_gpu", ds_cfg.get("train_micro_batch_size_per_gpu", "auto"), batch)
    clip = cfg.optim_wrapper.get("clip_grad") or {}
    max_norm = clip["max_norm"] if clip.get("max_norm") is not None else 1.0
    _differs("gradient_clipping", ds_cfg.get("gradient_clipping", "auto"), max_norm)
    return dict(
        # Lazy (as in a pure-Python config) so that the config still prints and dumps.
        type=LazyObject("xtuner.engine", "DeepSpeedStrategy"),
        config=ds_cfg,
        gradient_accumulation_steps=accumulation,
        train_micro_batch_size_per_gpu=batch,
        gradient_clipping=max_norm,
        exclude_frozen_parameters=True,
        sequence_parallel_size=cfg.get("sequence_parallel_size", 1),
    )


def _check_deepspeed_installed() -> None:
    from mmengine.utils import digit_version

    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(f"--deepspeed needs the deepspeed package (>= {MIN_DEEPSPEED}): {e}") from e
    if digit_version(deepspeed.__version__) < digit_version(MIN_DEEPSPEED):
        raise RuntimeError(f"--deepspeed needs deepspeed >= {MIN_DEEPSPEED}, found {deepspeed.__version__}")


def build_runner(cfg: Config, deepspeed: str | None = None) -> Runner:
    """The runner for ``cfg`` (launch options applied): see the module docstring."""
    if deepspeed is not None:
        _check_deepspeed_installed()
        if cfg.optim_wrapper.get("type") == "DeepSpeedOptimWrapper":
            _logger().warning(
                "DeepSpeed training is already enabled in your config: --deepspeed is not applied."
            )
        else:
            from .flexible_runner import Sa2VAFlexibleRunner
            from .runner import init_gloo_without_gpu

            cfg.strategy = deepspeed_settings(cfg, deepspeed)
            cfg.optim_wrapper = dict(type="DeepSpeedOptimWrapper", optimizer=cfg.optim_wrapper.optimizer)
            init_gloo_without_gpu()  # the strategy sets up the process group before any runner code runs
            return Sa2VAFlexibleRunner.from_cfg(cfg)
    if "runner_type" not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def train(
    cfg: str | Path | Config,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
    deepspeed: str | None = None,
    launcher: str = "none",
    *,
    cfg_options: dict[str, Any] | None = None,
    seed: int | None = None,
    auto_batch: dict[str, Any] | None = None,
) -> Runner:
    """Train ``cfg`` and return its runner (after training).

    Args:
        cfg: a config file or :class:`Config` (copied, not changed).
        work_dir: where logs and checkpoints go (default: the config's, else ``work_dirs/<name>``).
        resume: ``"auto"`` (newest intact checkpoint of the work dir, if any) or a checkpoint path.
        deepspeed: ``zero1`` / ``zero2`` / ``zero3``, xtuner's ``deepspeed_zero*`` names or a JSON file.
        launcher: ``"none"`` (one process) or ``"pytorch"`` (under ``torchrun``), ``"slurm"``, ``"mpi"``.
        cfg_options: ``--cfg-options`` overrides, merged first.
        seed: replaces the config's ``randomness.seed``.
        auto_batch: ``--auto-batch``: find the largest micro-batch first and apply it
            (:func:`~projects.sa2va.engine.batch_finder.auto_batch_for_training`; keys ``max_batch``,
            ``headroom``, ``policy``); ``None``: the config's batch.

    Raises:
        FileNotFoundError, ConfigFileError: the config or a resume path. DeepSpeedConfigError: a bad
        ``deepspeed`` value. Whatever training raises (e.g. ``NonFiniteLossError``).
    """
    cfg = load_config(cfg, cfg_options)  # a copy of a given Config
    torch.serialization.add_safe_globals(mmengine_safe_globals())
    apply_launch_options(cfg, work_dir=work_dir, resume=resume, launcher=launcher, seed=seed)
    if auto_batch is not None:
        from .batch_finder import AutoBatchError, auto_batch_for_training

        ow_type = cfg.optim_wrapper.get("type")
        if deepspeed is not None or getattr(ow_type, "__name__", ow_type) == "DeepSpeedOptimWrapper":
            raise AutoBatchError("--auto-batch with DeepSpeed: the trials do not shard as ZeRO does")
        auto_batch_for_training(cfg, launcher=launcher, resume=resume, **auto_batch)
    runner = build_runner(cfg, deepspeed)
    runner.train()
    return runner
