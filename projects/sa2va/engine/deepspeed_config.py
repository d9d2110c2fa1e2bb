"""The DeepSpeed JSON of ``tools/train.py --deepspeed NAME|FILE`` (:mod:`projects.sa2va.engine.launch`).

Three things differ from handing the JSON to DeepSpeed as it is:

* **Names.** ``zero1`` / ``zero2`` / ``zero3`` (and xtuner's names ``deepspeed_zero1`` / ``_zero2`` /
  ``_zero3``) mean this toolkit's files in ``projects/sa2va/configs/deepspeed/``; any other value must be
  a JSON file.
* **Precision comes from the config, as under DDP.** xtuner's JSONs set ``"bf16": {"enabled": "auto"}``,
  which makes DeepSpeed cast the *whole* model to bf16, trainable weights included, with no autocast:
  the SAM2 prompt encoder then multiplies fp32 point coordinates by a bf16 matrix and fails, and the
  trainable weights are stored and exported in bf16. Instead, the ``bf16`` / ``fp16`` sections are
  switched off and DeepSpeed's ``torch_autocast`` gets the autocast dtype of the config's
  ``optim_wrapper`` (``DeviceAmpOptimWrapper``: its ``dtype`` on CUDA, none on CPU; mmengine's
  ``AmpOptimWrapper``: its ``dtype``, float16 by default), so the model keeps the dtypes it was built in
  (fp32 trainable weights, bf16 frozen ones on GPU) and the forward runs in the same autocast as a DDP
  run. ``lower_precision_safe_modules`` defaults to ``[]``: gradients are reduced in fp32, as DDP does.

* **ZeRO-3 keeps no parameter gathered between steps** (``stage3_param_persistence_threshold`` 0): after
  each step DeepSpeed 0.18.9 re-gathers the "persistent" (small) parameters in one coalesced all-gather
  with the dtype of the first of them, which fails when fp32 trainable and bf16 frozen ones are mixed
  (``TypeError: output tensor must have the same type as input tensor``, seen on 2 H200s).

Checked with deepspeed 0.18.9 (``torch_autocast`` section, ``deepspeed/runtime/torch_autocast.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
NAMES = {f"{prefix}zero{stage}": f"zero{stage}.json" for prefix in ("", "deepspeed_") for stage in (1, 2, 3)}


class DeepSpeedConfigError(ValueError):
    """A ``--deepspeed`` value that names no file, or a file that is not a DeepSpeed JSON object."""


def resolve_deepspeed_file(value: str) -> Path:
    """``--deepspeed`` value -> JSON path: an existing file, or a name in :data:`NAMES`."""
    path = Path(value)
    if path.is_file():
        return path
    if value in NAMES:
        return SHIPPED_DIR / NAMES[value]
    raise DeepSpeedConfigError(
        f"--deepspeed {value!r}: no such file, and not one of the names {sorted(NAMES)} "
        f"(files in {SHIPPED_DIR})"
    )


def read_deepspeed_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DeepSpeedConfigError(f"{path}: cannot read the DeepSpeed config: {e}") from e
    if not isinstance(cfg, dict):
        raise DeepSpeedConfigError(f"{path}: a DeepSpeed config is a JSON object, got {type(cfg).__name__}")
    return cfg


def autocast_dtype(optim_wrapper: dict, cuda: bool) -> str | None:
    """The autocast dtype name a DDP run of this ``optim_wrapper`` config would use, or None (fp32)."""
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    from .optim import DeviceAmpOptimWrapper

    kind = optim_wrapper.get("type", "OptimWrapper")
    cls = OPTIM_WRAPPERS.get(kind) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise DeepSpeedConfigError(f"optim_wrapper type {kind!r} is not a registered optimiser wrapper")
    if issubclass(cls, DeviceAmpOptimWrapper):
        return DeviceAmpOptimWrapper.autocast_dtype_name(optim_wrapper.get("dtype", "bfloat16"), cuda)
    if issubclass(cls, AmpOptimWrapper):  # mmengine's default dtype is float16
        return str(optim_wrapper.get("dtype") or "float16").replace("torch.", "")
    return None


def apply_precision(ds_cfg: dict[str, Any], dtype: str | None) -> tuple[dict[str, Any], list[str]]:
    """Copy of ``ds_cfg`` with bf16/fp16 off and ``torch_autocast`` set to ``dtype`` (see module doc).

    Returns:
        (new config, notes for the log: one per changed setting).
    """
    out = copy.deepcopy(ds_cfg)
    notes = []
    for key in ("bf16", "fp16"):
        section = out.get(key)
        if isinstance(section, dict) and section.get("enabled", False) not in (False, "false"):
            notes.append(
                f'"{key}": {{"enabled": {json.dumps(section["enabled"])}}} (whole model cast to {key}) '
                "switched off: precision follows the config's optim_wrapper"
            )
        out[key] = {**(section if isinstance(section, dict) else {}), "enabled": False}
    given = out.get("torch_autocast") if isinstance(out.get("torch_autocast"), dict) else {}
    if dtype is None:
        if given.get("enabled"):
            notes.append("torch_autocast switched off: the config's optim_wrapper trains in fp32")
        out["torch_autocast"] = {**given, "enabled": False}
    else:
        if given.get("enabled") and given.get("dtype", dtype) != dtype:
            notes.append(f"torch_autocast dtype {given.get('dtype')} -> {dtype} (the config's optim_wrapper)")
        out["torch_autocast"] = {
            "lower_precision_safe_modules": [],
            **given,
            "enabled": True,
            "dtype": dtype,
        }
    return out, notes


def apply_zero3_settings(ds_cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Copy of ``ds_cfg`` with ``stage3_param_persistence_threshold`` 0 under ZeRO-3 (see module doc)."""
    out = copy.deepcopy(ds_cfg)
    zero = out.get("zero_optimization")
    if not isinstance(zero, dict) or int(zero.get("stage", 0)) != 3:
        return out, []
    key = "stage3_param_persistence_threshold"
    notes = []
    if zero.get(key, 0) not in (0, "0"):
        notes.append(
            f"{key} {zero[key]} -> 0: DeepSpeed 0.18.9 re-gathers persistent parameters in one dtype, "
            "which fails with fp32 trainable and bf16 frozen parameters"
        )
    zero[key] = 0
    return out, notes


def prepare_deepspeed_config(ds_cfg: dict[str, Any], dtype: str | None) -> tuple[dict[str, Any], list[str]]:
    """:func:`apply_precision` then :func:`apply_zero3_settings`: the JSON the run uses, and the log notes."""
    out, notes = apply_precision(ds_cfg, dtype)
    out, more = apply_zero3_settings(out)
    return out, notes + more
