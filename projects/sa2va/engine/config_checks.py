"""Checks of a loaded config that turn silent no-ops into errors, and the validation switch.

mmengine evaluates a config's ``_base_`` files before the file itself and ``--cfg-options`` after it, so a
top-level name (``lr``, ``max_epochs``, ``data_root``, ...) set in a leaf or on the command line does not
reach the fields a base computed from it. :func:`check_leaf_knobs` and :func:`check_cfg_options` refuse
those, naming the field to set; :func:`validation_off_without_ann_file` switches validation off for a
``None`` validation annotation file. All three run in
:func:`~projects.sa2va.engine.builder.load_config`, so in every tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import MMLogger

from .config_file import ConfigFileError, read_base_imports

__all__ = [
    "KNOB_FIELDS",
    "LEAF_VARIABLE_FIELDS",
    "RUNTIME_TOP_LEVEL_KEYS",
    "check_cfg_options",
    "check_leaf_knobs",
    "validation_off_without_ann_file",
]


def validation_off_without_ann_file(cfg: Config) -> bool:
    """Train without validation when ``val_dataloader.dataset.ann_file`` is ``None``.

    A leaf's ``val_ann_file = None`` (or ``--cfg-options val_dataloader.dataset.ann_file=None``) then sets
    ``val_dataloader``, ``val_cfg`` and ``val_evaluator`` to ``None`` (mmengine wants all three or none),
    drops ``train_cfg.val_interval`` and the checkpoint hook's ``save_best`` / ``rule`` (there is no
    validation metric to keep a best checkpoint by), and logs it.

    Returns:
        whether validation was switched off.
    """
    val = cfg.get("val_dataloader")
    if not isinstance(val, dict) or not isinstance(val.get("dataset"), dict):
        return False
    if "ann_file" not in val["dataset"] or val["dataset"]["ann_file"] is not None:
        return False
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    if isinstance(cfg.get("train_cfg"), dict):
        cfg.train_cfg.pop("val_interval", None)
    checkpoint = cfg.get("default_hooks", {}).get("checkpoint")
    if isinstance(checkpoint, dict):
        checkpoint.pop("save_best", None)
        checkpoint.pop("rule", None)
    MMLogger.get_current_instance().info(
        "val_dataloader.dataset.ann_file is None: training without validation (no best checkpoint)"
    )
    return True


#: Top-level values of the ``_base_`` files and the field each one is copied into there. A base computes
#: the field when it is read, so a leaf that sets only the top-level name changes nothing.
KNOB_FIELDS: dict[str, str] = {
    "lr": "optim_wrapper.optimizer.lr",
    "weight_decay": "optim_wrapper.optimizer.weight_decay",
    "max_norm": "optim_wrapper.clip_grad.max_norm",
    "accumulative_counts": "optim_wrapper.accumulative_counts",
    "max_epochs": "train_cfg.max_epochs",
    "batch_size": "train_dataloader.batch_size",
    "num_workers": "train_dataloader.num_workers",
    "val_interval": "train_cfg.val_interval",
}


#: Top-level config keys read when the run starts (mmengine's ``Runner.from_cfg`` / ``FlexibleRunner``, the
#: toolkit's tools and ``path``, which :func:`apply_model_path` writes into every model-folder field): the
#: only top-level names ``--cfg-options`` can set. Every other top-level name is a variable of the file,
#: already used when the file was read.
RUNTIME_TOP_LEVEL_KEYS = frozenset(
    [
        "path",
        "work_dir",
        "experiment_name",
        "load_from",
        "resume",
        "launcher",
        "log_level",
        "default_scope",
        "runner_type",
        "compile",
        "strategy",
        "cfg",
        "randomness",
        "env_cfg",
        "visualizer",
        "log_processor",
        "default_hooks",
        "custom_hooks",
        "model",
        "model_wrapper_cfg",
        "data_preprocessor",
        "train_dataloader",
        "val_dataloader",
        "test_dataloader",
        "train_cfg",
        "val_cfg",
        "test_cfg",
        "val_evaluator",
        "test_evaluator",
        "optim_wrapper",
        "param_scheduler",
        "auto_scale_lr",
        "tokenizer",
        "processor",
        "template",
        "dataset_inputs",
    ]
)
#: Where the leaf configs' own variables go (the hint of :func:`check_cfg_options`).
LEAF_VARIABLE_FIELDS: dict[str, str] = {
    **KNOB_FIELDS,
    "data_root": "train_dataloader.dataset.ann_file / image_root (and val_dataloader.dataset's)",
    "train_ann_file": "train_dataloader.dataset.ann_file",
    "val_ann_file": "val_dataloader.dataset.ann_file",
    "pretrained_pth": "model.pretrained_pth",
}


def check_cfg_options(cfg: Config, cfg_options: dict, where: str) -> None:
    """Refuse ``--cfg-options`` that would change nothing: a top-level variable of the file.

    ``--cfg-options lr=1e-5`` (or ``max_epochs=3``, ``data_root=...``, ``train_ann_file=...``) sets the
    file's top-level name after the file was read, when the fields computed from it (``optim_wrapper``,
    ``train_cfg``, the datasets) already hold the old value: the run would use the old one. A top-level
    name that is not in the config at all and not a runner key is refused too (a typo would add it).

    Raises:
        ConfigFileError: naming the option, the config and the field to set instead.
    """
    for key in cfg_options:
        top = key.split(".")[0]
        if top in RUNTIME_TOP_LEVEL_KEYS:
            continue
        if top not in cfg:
            raise ConfigFileError(
                f"--cfg-options {key}: {where} has no top-level `{top}` and no run reads it (a typo?)"
            )
        if not isinstance(cfg[top], (dict, list, tuple)):
            field = LEAF_VARIABLE_FIELDS.get(top)
            hint = f"set `{field}` instead" if field else "set the field it was copied into instead"
            raise ConfigFileError(
                f"--cfg-options {key}: `{top}` is a variable of {where}, used when the file was read; "
                f"setting it now changes nothing ({hint}, or edit the file)"
            )


def _leaf_assignments(path: Path) -> dict[str, int]:
    """Names the file assigns at module level (outside ``read_base``), with the line of the last one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, int] = {}
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = stmt.lineno
    return out


def _field(cfg: Config, dotted: str) -> tuple[bool, object]:
    node: object = cfg
    for name in dotted.split("."):
        if not isinstance(node, (dict, Config)) or name not in node:
            return False, None
        node = node[name]
    return True, node


def check_leaf_knobs(cfg: Config, path: str | Path) -> None:
    """Refuse a config file that sets a base's top-level value without the field the base copied it into.

    ``lr = 1e-4`` in a leaf leaves ``optim_wrapper.optimizer.lr`` at the base's value (mmengine evaluates
    the base first), and ``data_root = "data/mine"`` leaves the dataset's paths at the base's folder: the
    run would train with the old value and nothing would say so. Checked for the names of
    :data:`KNOB_FIELDS` and for ``data_root`` (one of the training set's ``ann_file`` / ``image_root`` must
    start with it), only where the file itself assigns the name and only in a file with ``read_base``
    imports (the full config mmengine dumps in a work dir has none: all its values are its own).

    Raises:
        ConfigFileError: naming the file, the line, the value set and the field that kept the old one.
    """
    path = Path(path)
    if not read_base_imports(path):
        return  # no base: every value is the file's own (e.g. the full config mmengine dumps in a work dir)
    assigned = _leaf_assignments(path)
    for name, dotted in KNOB_FIELDS.items():
        if name not in assigned or name not in cfg:
            continue
        present, value = _field(cfg, dotted)
        if present and value != cfg[name]:
            raise ConfigFileError(
                f"{path}:{assigned[name]}: sets `{name} = {cfg[name]!r}`, but `{dotted}` is {value!r}: "
                f"the base file computed that field from its own `{name}` when it was read. Set "
                f"`{dotted} = {name}` after it (or set only `{dotted}`)."
            )
    if "data_root" in assigned and isinstance(cfg.get("data_root"), str):
        root = cfg["data_root"]
        paths = [
            v
            for f in ("ann_file", "image_root")
            for ok, v in [_field(cfg, f"train_dataloader.dataset.{f}")]
            if ok and isinstance(v, str)
        ]
        if paths and not any(p.startswith(root) for p in paths):
            raise ConfigFileError(
                f"{path}:{assigned['data_root']}: sets `data_root = {root!r}`, but the training set reads "
                f"{' and '.join(repr(p) for p in paths)} (`train_dataloader.dataset.ann_file` / "
                f"`image_root`, computed by the base from its own `data_root`). Set them from `data_root` "
                f"after it."
            )
