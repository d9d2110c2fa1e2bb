"""The one model builder of test, predict, export and the demo: seeded as training seeds.

Training builds ``cfg.model`` inside mmengine's ``Runner.__init__`` (0.10.6): it calls
``set_randomness(**cfg.randomness)`` (:func:`mmengine.runner.set_random_seed` seeds ``random``,
``numpy`` and ``torch`` with ``randomness.seed``), then builds the logger, message hub and visualizer
(no random draws), then the model. Parts that no checkpoint holds (the frozen random-initialised
encoders of the tiny demo and of ``*_random`` configs) are therefore a function of that seed alone.
:func:`build_model` seeds the same way right before it builds, so such parts equal the trained run's
(``tests/engine/test_build_model.py`` checks it on the tiny demo's export):

* the seed is the one the run recorded in the checkpoint (``meta['seed']``, written by mmengine's
  ``save_checkpoint``: the seed it built the model with, also when the config said ``seed=None`` and
  mmengine drew one), else the config's ``randomness.seed``, else 0 (logged);
* ``diff_rank_seed`` is ignored: under DDP every rank's model is replaced by rank 0's at wrapping
  (``DistributedDataParallel`` broadcasts parameters and buffers), and rank 0 is seeded with the seed
  itself;
* ``deterministic`` is not applied (it switches algorithms, not random draws).

The trainable tensors then come from ``checkpoint``: a trainable ``.pth`` (``iter_N.pth``, the
``*_trainable.pth`` of a DeepSpeed run, or a reference-style ``.pth``), loaded strictly, or an
exported Hugging Face folder, read by :class:`~projects.sa2va.checkpoint.hf_sa2va.HFSa2VALoader`
instead of the config's ``load_weights``. With a checkpoint the config's ``pretrained_pth`` is not
loaded (the checkpoint replaces every trainable tensor it would write).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import set_random_seed

from ..checkpoint.safe_load import (
    check_not_deepspeed_dir,
    load_checkpoint_file,
    trainable_state_from_checkpoint,
)
from ..checkpoint.trainable_pth import load_trainable_checkpoint, load_trainable_state
from ..models.builder import build_component
from ..models.sa2va import Sa2VAModel
from .config_checks import check_cfg_options, check_leaf_knobs, validation_off_without_ann_file
from .config_file import apply_model_path, read_config

__all__ = ["build_model", "construct_model", "load_config", "resolve_seed"]

#: Seed used when neither the checkpoint nor the config names one.
FALLBACK_SEED = 0


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


def load_config(config: str | Path | Config, cfg_options: dict[str, Any] | None = None) -> Config:
    """A :class:`Config` from a file (or a copy of a given one), with ``--cfg-options``-style overrides.

    A file is read by :func:`~projects.sa2va.engine.config_file.read_config` (a leaf config copied out of
    ``projects/sa2va/configs/`` finds its ``_base_`` files there). After the overrides, the top-level
    ``path`` (the model's Hugging Face folder, if the config has one) is written into every place that
    reads the folder (:func:`~projects.sa2va.engine.config_file.apply_model_path`), so
    ``cfg_options={'path': folder}`` re-points the tokenizer, processors, MLLM and weight loader at once.
    An override of a top-level variable of the file (``lr``, ``max_epochs``, ``data_root``, ...), which
    would change nothing, is refused (:func:`~projects.sa2va.engine.config_file.check_cfg_options`).
    A ``val_dataloader.dataset.ann_file`` of ``None`` switches validation off
    (:func:`~projects.sa2va.engine.config_file.validation_off_without_ann_file`).

    Raises:
        FileNotFoundError: ``config`` is a path that does not exist.
        ConfigFileError: the file cannot be parsed, or a nested model-folder field contradicts the
            top-level ``path`` (the message names it).
        KeyError: the config has no ``model``.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        where = cfg.filename or "the config"
    else:
        cfg = read_config(config)
        where = str(config)
        check_leaf_knobs(cfg, config)
    if cfg_options:
        check_cfg_options(cfg, cfg_options, where)
        cfg.merge_from_dict(cfg_options)
    if "model" not in cfg:
        raise KeyError(f"{where}: no `model` in the config")
    apply_model_path(cfg)
    validation_off_without_ann_file(cfg)
    return cfg


def construct_model(model_cfg: dict | Sa2VAModel, where: str = "config") -> Sa2VAModel:
    """Build a ``model`` config dict into a :class:`Sa2VAModel` (no seeding: the caller has seeded).

    The one construction step of :func:`build_model` and of the training runners
    (``Sa2VARunner.build_model``, ``Sa2VAFlexibleRunner``), so training and every later rebuild make the
    model the same way. A built model is returned as it is.

    ``model_cfg['pretrained_pth']`` (optional, not an argument of the model): a trainable-weights ``.pth``
    loaded right after the model is built (LoRA applied) by
    :func:`~projects.sa2va.checkpoint.trainable_pth.load_trainable_checkpoint`; ``None``: nothing loaded.

    Raises:
        TypeError: ``model_cfg`` builds something else than a Sa2VA model (``where`` names the config).
    """
    pretrained_pth = None
    if isinstance(model_cfg, dict):
        model_cfg = copy.copy(model_cfg)
        pretrained_pth = model_cfg.pop("pretrained_pth", None)
    model = build_component(model_cfg)
    if not isinstance(model, Sa2VAModel):
        raise TypeError(f"{where}: `model` builds a {type(model).__name__}, not a Sa2VAModel")
    if pretrained_pth is not None:
        load_trainable_checkpoint(model, pretrained_pth)
        _logger().info(f"construct_model: loaded the trainable tensors of {pretrained_pth} (pretrained_pth)")
    return model


def resolve_seed(cfg: Config, checkpoint_meta: dict | None = None) -> tuple[int, str]:
    """The seed training built the model with, and where it was found (for the log line).

    Order: ``checkpoint_meta['seed']`` (what the run recorded), ``cfg.randomness.seed``,
    :data:`FALLBACK_SEED`.
    """
    recorded = (checkpoint_meta or {}).get("seed")
    configured = (cfg.get("randomness") or {}).get("seed")
    if recorded is not None:
        if configured is not None and int(configured) != int(recorded):
            _logger().warning(
                f"the checkpoint was trained with seed {recorded}, the config says {configured}: "
                f"building with {recorded}, as the run did"
            )
        return int(recorded), "the checkpoint's meta"
    if configured is not None:
        return int(configured), "the config's randomness.seed"
    return FALLBACK_SEED, "no seed in the checkpoint or the config: the fallback"


def build_model(
    cfg: str | Path | Config,
    checkpoint: str | Path | None = None,
    *,
    cfg_options: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Sa2VAModel:
    """Seed as training does, build ``cfg.model``, load ``checkpoint``; the model in eval mode.

    Args:
        cfg: a config (file or :class:`Config`); its ``model`` must build a :class:`Sa2VAModel`.
        checkpoint: a trainable-weights ``.pth`` (strict), an exported Hugging Face folder, or
            ``None`` (the weights the config itself loads, e.g. its ``path`` / ``pretrained_pth``).
        cfg_options: overrides merged into the config first.
        seed: the seed to build with; ``None``: :func:`resolve_seed` (the run's).

    Raises:
        FileNotFoundError: missing config or checkpoint. ValueError: a DeepSpeed checkpoint directory.
        KeyError: checkpoint keys that do not match the model (message names the file).
        TypeError: ``cfg.model`` is not a Sa2VA model.
    """
    cfg = load_config(cfg, cfg_options)
    model_cfg = copy.deepcopy(cfg.model)
    meta: dict | None = None
    state: dict | None = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        check_not_deepspeed_dir(checkpoint)
        model_cfg["pretrained_pth"] = None
        if checkpoint.is_dir():
            from ..checkpoint.hf_sa2va import HFSa2VALoader

            model_cfg["load_weights"] = dict(type=HFSa2VALoader, path=str(checkpoint))
        elif checkpoint.is_file():
            loaded = load_checkpoint_file(checkpoint)
            meta = loaded.get("meta") if isinstance(loaded.get("meta"), dict) else None
            state = trainable_state_from_checkpoint(loaded)
        else:
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    if seed is None:
        seed, source = resolve_seed(cfg, meta)
    else:
        source = "the caller"
    _logger().info(f"build_model: seed {seed} (from {source}) before building the model")
    set_random_seed(seed)
    model = construct_model(model_cfg, cfg.filename or "config")
    if state is not None:
        load_trainable_state(model, state, checkpoint)
        _logger().info(f"build_model: loaded {len(state)} trainable tensors from {checkpoint}")
    return model.eval()
