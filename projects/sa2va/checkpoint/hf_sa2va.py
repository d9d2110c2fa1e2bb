"""Official Sa2VA Hugging Face folders: load them into :class:`Sa2VAModel` and export back to them.

Folder layout (``Sa2VAChatModel`` remote code): ``config.json`` (``model_type`` ``sa2va_chat``),
``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``,
tokenizer files and remote-code ``*.py``. Tensor names follow :data:`~.key_tables.HF_KEY_TABLE`.

* Load (:class:`HFSa2VALoader`): header-only validation of every shard first (unknown, missing and
  wrongly shaped tensors are reported together, by name, before anything is copied), then one tensor
  at a time is read (memory-mapped) and copied into the already-built model parameter.
* Export (:func:`export_hf_folder`): LoRA deltas and ``modules_to_save`` copies are merged tensor by
  tensor into the base weights without modifying the model; shards are planned from shapes, then
  written one at a time, so at most one shard of new tensors exists at once.
* Adapter export (:func:`export_adapter`, :func:`load_adapter_export`): the LoRA adapter in PEFT format
  plus the other trained tensors under official names.

Toolkit section of ``config.json``: official Sa2VA always uses SAM2 Hiera-L, so its ``config.json`` does
not describe the grounding encoder. When the exported model's :class:`SAM2GroundingEncoder` differs from
that default (:data:`OFFICIAL_GROUNDING_ENCODER`: another ``config_name``, any ``overrides``, or a mask
``upsampler``), the export adds (official-shape exports get no such section and are unchanged)::

    "sa2va_toolkit": {"grounding_encoder": {"config_name": "sam2_hiera_l.yaml",
                                            "overrides": {...} or null, "upsampler": {...} or null}}

the encoder's own arguments, JSON as they were given. The official remote code ignores it (extra
``config.json`` fields become plain attributes of the ``PretrainedConfig``). ``Sa2VAPredictor.from_hf``
builds the grounding encoder from it (:func:`read_toolkit_grounding_encoder`, which rejects an unknown or
wrongly typed field, naming ``config.json`` and the field), and the loader then checks every tensor
against that encoder; an upsampler's tensors are read from :data:`EXTENSIONS_FILE`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import MMLogger
from safetensors.torch import save_file
from torch import nn

from ..hf_folder import HFFolderError, open_safetensors, read_json_file
from .key_tables import LM_PREFIX, PEFT_LM_PREFIX, KeyTable, UnknownKeyError, hf_key_table, peft_role

__all__ = [
    "ADAPTER_TRAINED_FILE",
    "DEFAULT_IGNORED_CHECKPOINT_KEYS",
    "CheckpointMismatchError",
    "ExportEntry",
    "HFSa2VALoader",
    "export_adapter",
    "export_hf_folder",
    "grounding_encoder_section",
    "hf_weight_files",
    "load_adapter_export",
    "load_hf_sa2va_weights",
    "merged_model_tensors",
    "parse_size",
    "plan_shards",
    "read_toolkit_grounding_encoder",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_TRAINED_FILE = "sa2va_trained.safetensors"
#: Checkpoint tensors that are recomputed from the config and may be present in older folders: RoPE
#: inverse frequencies (non-persistent buffers in the models built here).
DEFAULT_IGNORED_CHECKPOINT_KEYS: tuple[str, ...] = (r"^language_model\..*\.rotary_emb\.inv_freq$",)
#: Model tensors of this project's extensions, which the official format has no place for: absent from
#: an official folder (they keep their initialisation) and exported to :data:`EXTENSIONS_FILE` instead.
EXTENSION_PREFIXES: tuple[str, ...] = ("grounding_encoder.upsampler.",)
EXTENSIONS_FILE = "sa2va_extensions.safetensors"

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

#: ``config.json`` field of this toolkit's settings that the official format has no place for.
TOOLKIT_SECTION = "sa2va_toolkit"
#: The grounding encoder every official Sa2VA folder implies (SAM2 Hiera-L as released, no upsampler).
OFFICIAL_GROUNDING_ENCODER: dict[str, Any] = {
    "config_name": "sam2_hiera_l.yaml",
    "overrides": None,
    "upsampler": None,
}


def grounding_encoder_section(model: nn.Module) -> dict[str, Any] | None:
    """``config.json``'s ``sa2va_toolkit.grounding_encoder`` for ``model``: its grounding encoder's
    ``build_settings`` (``config_name`` / ``overrides`` / ``upsampler``), or ``None`` when they are
    :data:`OFFICIAL_GROUNDING_ENCODER`."""
    encoder = model.grounding_encoder
    settings = getattr(encoder, "build_settings", None)
    if not isinstance(settings, dict):
        raise TypeError(
            f"{type(encoder).__name__} has no `build_settings` dict, so the export cannot tell whether its "
            "architecture is the official SAM2 Hiera-L"
        )
    settings = json.loads(json.dumps({k: settings.get(k) for k in OFFICIAL_GROUNDING_ENCODER}))
    return None if settings == OFFICIAL_GROUNDING_ENCODER else settings


def read_toolkit_grounding_encoder(folder: str | Path, hf: dict[str, Any]) -> dict[str, Any] | None:
    """The grounding-encoder arguments of an HF folder's ``config.json`` ``sa2va_toolkit`` section.

    Args:
        folder: the HF folder (named in errors).
        hf: its parsed ``config.json``.

    Returns:
        ``{"config_name": str, "overrides": dict | None, "upsampler": dict | None}``, or ``None`` when the
        folder has no section (an official folder: SAM2 Hiera-L).

    Raises:
        HFFolderError: the section, or a field of it, is missing, unknown or of the wrong type (the file
            and the field are named).
    """
    if TOOLKIT_SECTION not in hf:
        return None
    file = Path(folder) / "config.json"
    section = hf[TOOLKIT_SECTION]
    if not isinstance(section, dict):
        raise HFFolderError(
            f"{file}: `{TOOLKIT_SECTION}` must be a JSON object, got {type(section).__name__} {section!r}"
        )
    unknown = sorted(set(section) - {"grounding_encoder"})
    if unknown:
        raise HFFolderError(
            f"{file}: unknown field(s) {unknown} in `{TOOLKIT_SECTION}` (known: grounding_encoder)"
        )
    where = f"{TOOLKIT_SECTION}.grounding_encoder"
    encoder = section.get("grounding_encoder")
    if not isinstance(encoder, dict):
        raise HFFolderError(
            f"{file}: `{where}` must be a JSON object, got {type(encoder).__name__} {encoder!r}"
        )
    unknown = sorted(set(encoder) - set(OFFICIAL_GROUNDING_ENCODER))
    missing = sorted(set(OFFICIAL_GROUNDING_ENCODER) - set(encoder))
    if unknown or missing:
        raise HFFolderError(
            f"{file}: `{where}` has unknown field(s) {unknown} and lacks {missing}; it holds exactly "
            f"{sorted(OFFICIAL_GROUNDING_ENCODER)}"
        )
    name = encoder["config_name"]
    if not isinstance(name, str) or not name.endswith(".yaml"):
        raise HFFolderError(f"{file}: `{where}.config_name` must be a sam2 yaml name (str), got {name!r}")
    for key in ("overrides", "upsampler"):
        if encoder[key] is not None and not isinstance(encoder[key], dict):
            raise HFFolderError(
                f"{file}: `{where}.{key}` must be a JSON object or null, got "
                f"{type(encoder[key]).__name__} {encoder[key]!r}"
            )
    return dict(encoder)


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model (names and shapes listed in the message)."""


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


# --- reading a folder -------------------------------------------------------------------------------
def hf_weight_files(path: str | Path) -> dict[Path, list[str] | None]:
    """Safetensors files of an HF folder -> the keys its index assigns them (``None``: no index).

    Raises:
        FileNotFoundError: no ``model.safetensors.index.json`` nor ``model.safetensors`` (``.bin``
            weights are refused: they need pickle), or a shard named by the index is absent.
        HFFolderError: the index is not valid JSON or has no ``weight_map`` object of names to files.
    """
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json_file(index, what="the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise HFFolderError(
                f"{index}: `weight_map` must be an object of tensor name -> shard file name, found "
                f"{type(weight_map).__name__ if weight_map is not None else 'none'}"
            )
        files: dict[Path, list[str] | None] = {}
        for key, fname in weight_map.items():
            files.setdefault(path / fname, []).append(key)  # type: ignore[union-attr]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index}: shard {f.name} listed in weight_map is missing")
        return files
    if (path / SINGLE_FILE).is_file():
        return {path / SINGLE_FILE: None}
    bins = sorted(p.name for p in path.glob("*.bin"))
    hint = f" (found {bins}: convert them to safetensors; pickled weights are not loaded)" if bins else ""
    raise FileNotFoundError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE} found{hint}")


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """All persistent tensors of ``model`` by name, without copies (``nn.Module.state_dict`` semantics:
    a subclass's filtered ``state_dict`` override is bypassed)."""
    return nn.Module.state_dict(model, keep_vars=True)


def mismatch_message(
    header: str,
    unexpected: list[str],
    missing: list[str],
    shapes: list[str],
    *,
    unexpected_what: str = "unexpected checkpoint tensor(s)",
    missing_what: str = "model tensor(s) missing from the checkpoint",
    limit: int = 20,
) -> str:
    """``header`` then one indented line per non-empty list: its count, ``*_what`` and its first ``limit``."""
    parts = [header]
    if unexpected:
        parts.append(f"{len(unexpected)} {unexpected_what}: {unexpected[:limit]}")
    if missing:
        parts.append(f"{len(missing)} {missing_what}: {missing[:limit]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {shapes[:limit]}")
    return "\n  ".join(parts)


@dataclass
class LoadReport:
    """What a load did: counts and the checkpoint keys ignored by the allow-list."""

    loaded: int = 0
    ignored: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def load_hf_sa2va_weights(
    model: nn.Module,
    path: str | Path,
    *,
    key_table: KeyTable | None = None,
    ignore_checkpoint_keys: tuple[str, ...] = DEFAULT_IGNORED_CHECKPOINT_KEYS,
    allow_missing: tuple[str, ...] = (),
) -> LoadReport:
    """Copy every tensor of an official Sa2VA folder into ``model`` (a ``Sa2VAModel`` before LoRA).

    Args:
        model: the model whose parameters/buffers receive the weights (any device/dtype; values are
            cast by ``copy_``).
        path: the HF folder.
        key_table: checkpoint <-> model names (default: the adapter's, :func:`~.key_tables.hf_key_table`).
        ignore_checkpoint_keys: regexes of checkpoint keys that may be present and are skipped.
        allow_missing: regexes of model keys that may be absent from the checkpoint (besides the
            :data:`EXTENSION_PREFIXES` tensors, which an official folder cannot hold; a warning lists them).
            A folder with :data:`EXTENSIONS_FILE` (an export of this toolkit) must hold every extension
            tensor of the model there, and nothing else.

    Raises:
        CheckpointMismatchError: unknown, missing or wrongly shaped tensors (all listed, with file,
            checkpoint name, model name and both shapes); nothing is copied in that case.
        HFFolderError: a damaged shard or index (the file and the damage named; see ``hf_folder``).
    """
    path = Path(path)
    if getattr(getattr(model, "mllm", None), "lora_applied", False):
        raise RuntimeError("load the HF weights before LoRA is applied (Sa2VAModel load_weights does)")
    key_table = key_table or hf_key_table(model.mllm)
    targets = _model_tensors(model)
    files = hf_weight_files(path)
    ignore = [re.compile(p) for p in ignore_checkpoint_keys]
    plan: dict[Path, list[tuple[str, str]]] = {}
    unexpected: list[str] = []
    shapes: list[str] = []
    seen: dict[str, str] = {}
    report = LoadReport(files=[f.name for f in files])
    for file, listed in files.items():
        with open_safetensors(file) as f:
            keys = list(f.keys())
            if listed is not None and set(listed) != set(keys):
                extra = sorted(set(keys) - set(listed))
                absent = sorted(set(listed) - set(keys))
                raise CheckpointMismatchError(
                    f"{file}: contents differ from {INDEX_FILE}: not indexed {extra[:10]}, "
                    f"indexed but absent {absent[:10]}"
                )
            for key in keys:
                if any(p.search(key) for p in ignore):
                    report.ignored.append(key)
                    continue
                try:
                    mkey = key_table.to_model(key)
                except UnknownKeyError as e:
                    unexpected.append(f"{file.name}: {e}")
                    continue
                if mkey not in targets:
                    unexpected.append(f"{file.name}: {key!r} (model name {mkey!r} does not exist)")
                    continue
                if mkey in seen:
                    unexpected.append(f"{file.name}: {key!r} duplicates the tensor in {seen[mkey]}")
                    continue
                seen[mkey] = file.name
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(targets[mkey].shape):
                    shapes.append(
                        f"{file.name}: {key!r} has shape {list(shape)} in the checkpoint but the model's "
                        f"{mkey!r} has {list(targets[mkey].shape)}"
                    )
                    continue
                plan.setdefault(file, []).append((key, mkey))
    ext_file = path / EXTENSIONS_FILE
    if ext_file.is_file():  # an export of this toolkit: it holds every extension tensor, under model names
        with open_safetensors(ext_file) as f:
            for mkey in list(f.keys()):
                if not mkey.startswith(EXTENSION_PREFIXES) or mkey not in targets:
                    unexpected.append(f"{ext_file.name}: {mkey!r} (no such extension tensor in the model)")
                    continue
                seen[mkey] = ext_file.name
                shape = tuple(f.get_slice(mkey).get_shape())
                if shape != tuple(targets[mkey].shape):
                    shapes.append(
                        f"{ext_file.name}: {mkey!r} has shape {list(shape)} in the file but "
                        f"{list(targets[mkey].shape)} in the model"
                    )
                    continue
                plan.setdefault(ext_file, []).append((mkey, mkey))
    allow = [re.compile(p) for p in allow_missing]
    missing = []
    extensions = [k for k in targets if k not in seen and k.startswith(EXTENSION_PREFIXES)]
    if ext_file.is_file():
        extensions = []  # reported missing below
    if extensions:
        _logger().warning(
            f"{path}: {len(extensions)} extension tensor(s) keep their initialisation: {extensions[:5]}"
        )
    for mkey in targets:
        if mkey not in seen and not any(p.search(mkey) for p in allow) and mkey not in extensions:
            try:
                missing.append(f"{key_table.to_format(mkey)!r} (model {mkey!r})")
            except UnknownKeyError:
                missing.append(repr(mkey))
    if unexpected or missing or shapes:
        raise CheckpointMismatchError(
            mismatch_message(f"{path} does not match the model:", unexpected, missing, shapes)
        )

    with torch.no_grad():
        for file, pairs in plan.items():
            with open_safetensors(file) as f:
                for key, mkey in pairs:
                    targets[mkey].copy_(f.get_tensor(key))
                    report.loaded += 1
    _logger().info(
        f"Loaded {report.loaded} tensors from {path} ({len(files)} file(s)); "
        f"ignored {len(report.ignored)} recomputed tensor(s)"
    )
    return report


class HFSa2VALoader:
    """``Sa2VAModel(load_weights=dict(type=HFSa2VALoader, path=...))``: load an official HF folder.

    Called by ``Sa2VAModel`` after its parts are built and before embeddings are resized and LoRA is
    applied. See :func:`load_hf_sa2va_weights` for the checks.
    """

    def __init__(
        self,
        path: str,
        ignore_checkpoint_keys: tuple[str, ...] = DEFAULT_IGNORED_CHECKPOINT_KEYS,
        allow_missing: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.ignore_checkpoint_keys = tuple(ignore_checkpoint_keys)
        self.allow_missing = tuple(allow_missing)

    def __call__(self, model: nn.Module) -> None:
        load_hf_sa2va_weights(
            model,
            self.path,
            ignore_checkpoint_keys=self.ignore_checkpoint_keys,
            allow_missing=self.allow_missing,
        )

    def __repr__(self) -> str:
        return f"HFSa2VALoader(path={self.path!r})"


# --- merged view of a trained model -----------------------------------------------------------------
@dataclass
class ExportEntry:
    """One tensor of the export: plain model name, shape, dtype and a function that materialises it."""

    model_key: str
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]

    def nbytes(self, dtype: torch.dtype) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=dtype).element_size()


def _lora_adapter_names(lm: nn.Module) -> list[str]:
    return list(getattr(lm, "peft_config", {}).keys())


def merged_model_tensors(model: nn.Module) -> list[ExportEntry]:
    """Every tensor of ``model`` as it would be without LoRA, under the plain (pre-LoRA) model names.

    LoRA layers contribute ``base + delta`` (PEFT's ``get_delta_weight``, computed in float32 when the
    entry is materialised); ``modules_to_save`` contribute their trained copy and their frozen original (if
    not released) is dropped; ``trainable_token_indices`` modules contribute their base weight with the
    trained rows written in (cast to the base dtype, as their forward does). The model is not modified;
    nothing is computed until ``entry.make()``.
    """
    tensors = _model_tensors(model)
    mllm = getattr(model, "mllm", None)
    lora = bool(getattr(mllm, "lora_applied", False))
    if lora:
        names = _lora_adapter_names(mllm.language_model)
        if names != ["default"]:
            raise ValueError(f"export supports one LoRA adapter named 'default', the LM has {names}")
    entries: list[ExportEntry] = []
    for key, t in tensors.items():
        if not (lora and key.startswith(LM_PREFIX)):
            entries.append(ExportEntry(key, tuple(t.shape), lambda t=t: t.detach()))
            continue
        if not key.startswith(PEFT_LM_PREFIX):
            raise ValueError(f"LoRA-wrapped LM tensor {key!r} is not under {PEFT_LM_PREFIX!r}")
        inner = key[len(PEFT_LM_PREFIX) :]
        role = peft_role(key)
        if role.startswith("lora"):
            if role not in ("lora_A", "lora_B"):
                raise ValueError(f"{key!r}: LoRA variant {role!r} is not supported by the export")
            continue  # folded into the base weight below
        if role in ("tokens_delta", "tokens_original"):
            continue  # written into the base weight below
        if inner.endswith(".token_adapter.base_layer.weight"):
            entries.append(_trained_rows_entry(model, key, inner, t))
            continue
        if role == "copy":
            if ".modules_to_save.default." not in inner:
                raise ValueError(f"{key!r}: modules_to_save copy of an adapter other than 'default'")
            plain = inner.replace(".modules_to_save.default.", ".")
            entries.append(ExportEntry(LM_PREFIX + plain, tuple(t.shape), lambda t=t: t.detach()))
            continue
        if ".original_module." in inner:
            continue  # the trained copy replaces it
        if ".base_layer." in inner:
            plain = inner.replace(".base_layer.", ".")
            module_name = key.split(".base_layer.")[0]
            if inner.endswith(".base_layer.weight"):
                layer = model.get_submodule(module_name)
                if getattr(layer, "merged", False):
                    raise ValueError(f"{module_name}: LoRA is already merged into the base weight")

                def make(t: torch.Tensor = t, layer: nn.Module = layer) -> torch.Tensor:
                    with torch.no_grad():
                        delta = layer.get_delta_weight("default")
                        return (t.detach().float() + delta.float()).to(t.dtype)

                entries.append(ExportEntry(LM_PREFIX + plain, tuple(t.shape), make))
            else:
                entries.append(ExportEntry(LM_PREFIX + plain, tuple(t.shape), lambda t=t: t.detach()))
            continue
        entries.append(ExportEntry(LM_PREFIX + inner, tuple(t.shape), lambda t=t: t.detach()))
    seen: set[str] = set()
    for e in entries:
        if e.model_key in seen:
            raise ValueError(f"two model tensors map to the plain name {e.model_key!r}")
        seen.add(e.model_key)
    return entries


def _trained_rows_entry(model: nn.Module, key: str, inner: str, base: torch.Tensor) -> ExportEntry:
    """The export entry of a PEFT ``trainable_token_indices`` module: ``base [V, H]`` with the rows of its
    token ids replaced by the trained ``trainable_tokens_delta`` ``[n, H]`` (adapter ``default``)."""
    layer = model.get_submodule(key[: -len(".base_layer.weight")])
    if list(layer.trainable_tokens_delta.keys()) != ["default"]:
        raise ValueError(f"{key!r}: trainable tokens of adapters {list(layer.trainable_tokens_delta.keys())}")
    if layer.merged:
        raise ValueError(f"{key!r}: the trained token rows are already merged into the base weight")
    index = torch.tensor(layer.token_indices["default"], dtype=torch.long)
    delta = layer.trainable_tokens_delta["default"]

    def make() -> torch.Tensor:
        with torch.no_grad():
            w = base.detach()
            return w.index_copy(0, index.to(w.device), delta.detach().to(w.dtype))

    plain = inner[: -len(".token_adapter.base_layer.weight")] + ".weight"
    return ExportEntry(LM_PREFIX + plain, tuple(base.shape), make)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """``'5GB'``, ``'500MiB'``, ``1000000`` -> bytes."""
    if isinstance(size, int):
        return size
    m = _SIZE_RE.match(size)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (examples: 5GB, 500MB, 2GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
    """Greedy, order-preserving split of tensor sizes into shards of at most ``max_shard_bytes``
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, s in enumerate(sizes):
        if current and total + s > max_shard_bytes:
            shards.append(current)
            current, total = [], 0
        current.append(i)
        total += s
    if current:
        shards.append(current)
    return shards


def _build_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model was built in: that of its frozen vision tower (never upcast)."""
    return model.mllm.build_dtype


def official_config(model: nn.Module, source: dict[str, Any] | None, dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` of the export: the source's with ``llm_config.vocab_size`` = the LM's rows and the
    template updated, or one written in the official schema when there is no source folder."""
    mllm = model.mllm
    vocab = int(mllm.base_llm().get_input_embeddings().weight.shape[0])
    if mllm.checkpoint_layout == "qwen_vl":
        return _qwenvl_official_config(mllm, source, dtype, vocab)
    if source is not None:
        cfg = json.loads(json.dumps(source))
        cfg["llm_config"]["vocab_size"] = vocab
        cfg["template"] = mllm.template
        return cfg
    llm_cfg = mllm.base_llm().config.to_dict()
    llm_cfg["vocab_size"] = vocab
    llm_cfg["tie_word_embeddings"] = False
    llm_cfg["architectures"] = [type(mllm.base_llm()).__name__]
    llm_cfg["torch_dtype"] = _DTYPE_NAMES.get(dtype, str(dtype))
    vision = mllm.vision_config.to_dict()
    return {
        "_name_or_path": "",
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
            "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
            "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
        },
        "model_type": "sa2va_chat",
        "template": mllm.template,
        "force_image_size": vision["image_size"],
        "downsample_ratio": mllm.downsample_ratio,
        "ps_version": mllm.ps_version,
        "select_layer": mllm.select_layer,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "torch_dtype": _DTYPE_NAMES.get(dtype, str(dtype)),
        "vision_config": vision,
        "llm_config": llm_cfg,
    }


def _qwenvl_official_config(
    mllm: nn.Module, source: dict[str, Any] | None, dtype: torch.dtype, vocab: int
) -> dict[str, Any]:
    """``config.json`` of a Qwen-VL family export (``Sa2VAChatConfigQwen``: a Qwen-VL config + ``template``).

    The source's, with ``text_config.vocab_size`` = the LM's rows, untied embeddings and the template; or
    the adapter's Qwen-VL config in that schema when there is no source folder.
    """
    if source is not None:
        cfg = json.loads(json.dumps(source))
    else:
        cfg = mllm.config.to_dict()
        cfg.update(
            architectures=[mllm.official_architecture],
            auto_map={
                "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfigQwen",
                "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
                "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModelQwen",
            },
            model_type="sa2va_chat",
        )
        cfg["torch_dtype"] = _DTYPE_NAMES.get(dtype, str(dtype))
    cfg["text_config"]["vocab_size"] = vocab
    cfg["text_config"]["tie_word_embeddings"] = False
    cfg["tie_word_embeddings"] = False
    cfg["template"] = mllm.template
    return cfg


def config_auto_map_files(cfg: dict[str, Any]) -> list[str]:
    """The remote-code files a ``config.json``'s ``auto_map`` names (``configuration_sa2va_chat.py``, ...)."""
    return sorted({f"{v.split('.')[0]}.py" for v in (cfg.get("auto_map") or {}).values()})


def _write_processor_files(mllm: nn.Module, source_dir: Path | None, save_dir: Path) -> list[str]:
    """Copy the source's image-processor / chat-template files; a source-less Qwen-VL export gets a
    ``preprocessor_config.json`` from the adapter's vision config and family defaults."""
    names = (
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
        "chat_template.json",
    )
    copied = []
    if source_dir is not None:
        for name in names:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, save_dir / name)
                copied.append(name)
    if mllm.checkpoint_layout == "qwen_vl" and "preprocessor_config.json" not in copied:
        from transformers import Qwen2VLImageProcessorFast

        vision = mllm.config.vision_config
        Qwen2VLImageProcessorFast(
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size,
            image_mean=list(mllm.image_mean),
            image_std=list(mllm.image_std),
        ).save_pretrained(str(save_dir))
        copied.append("preprocessor_config.json")
    return copied


@dataclass
class ExportReport:
    """Files written by an export."""

    save_dir: Path
    shards: list[str]
    num_tensors: int
    total_bytes: int
    copied_code: list[str]


def export_hf_folder(
    model: nn.Module,
    save_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    key_table: KeyTable | None = None,
    tiling: dict[str, Any] | None = None,
) -> ExportReport:
    """Write ``model`` (LoRA merged) as an official Sa2VA HF folder.

    Args:
        model: a ``Sa2VAModel`` (with or without LoRA applied).
        save_dir: output folder; must not exist or be empty.
        source_dir: the official folder the model started from (default: ``model.mllm.path``): its
            ``config.json`` is updated and its remote-code ``*.py`` (and ``generation_config.json``) are
            copied. Without one, a ``config.json`` in the official schema is written and no remote code
            is copied (a warning says so).
        max_shard_size: bytes per shard (``'5GB'``, ``'500MB'``, int).
        dtype: dtype of the written tensors (default: the dtype the model was built in).
        tiling: InternVL ``config.json`` tiling fields (``min_dynamic_patch``, ``max_dynamic_patch``,
            ``use_thumbnail``) the model trained with; they replace the source's (or the official
            defaults 1 / 12 / True) so that the folder preprocesses images as training did.

    Returns:
        :class:`ExportReport`.
    """
    save_dir = Path(save_dir)
    if save_dir.exists() and any(save_dir.iterdir()):
        raise FileExistsError(f"{save_dir} exists and is not empty; choose a new --save-path")
    source_dir = Path(source_dir) if source_dir is not None else None
    if source_dir is None and getattr(model.mllm, "path", None):
        source_dir = Path(model.mllm.path)
    if source_dir is not None and source_dir.resolve() == save_dir.resolve():
        raise ValueError(f"save_dir {save_dir} is the source folder; refusing to overwrite it")
    dtype = dtype or _build_dtype(model)
    key_table = key_table or hf_key_table(model.mllm)
    save_dir.mkdir(parents=True, exist_ok=True)

    entries = merged_model_tensors(model)
    extras = [e for e in entries if e.model_key.startswith(EXTENSION_PREFIXES)]
    entries = [e for e in entries if not e.model_key.startswith(EXTENSION_PREFIXES)]
    if extras:
        ext = {e.model_key: e.make().to(device="cpu", dtype=dtype).contiguous() for e in extras}
        save_file(ext, str(save_dir / EXTENSIONS_FILE), metadata={"format": "pt"})
        _logger().warning(
            f"{save_dir}: {len(extras)} tensor(s) of extensions outside the official format "
            f"(e.g. {extras[0].model_key!r}) written to {EXTENSIONS_FILE}; the official remote code "
            "ignores them"
        )
    official = [key_table.to_format(e.model_key) for e in entries]
    sizes = [e.nbytes(dtype) for e in entries]
    shards = plan_shards(sizes, parse_size(max_shard_size))
    n = len(shards)
    weight_map: dict[str, str] = {}
    names = []
    for si, idx in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{n:05d}.safetensors"
        names.append(fname)
        tensors = {}
        for i in idx:
            tensors[official[i]] = entries[i].make().to(device="cpu", dtype=dtype).contiguous()
            weight_map[official[i]] = fname
        save_file(tensors, str(save_dir / fname), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (save_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    source_cfg = None
    if source_dir is not None:
        source_cfg = read_json_file(source_dir / "config.json", what="the source folder's config.json")
    cfg = official_config(model, source_cfg, dtype)
    if tiling and model.mllm.checkpoint_layout != "qwen_vl":
        cfg.update(tiling)
    cfg.pop(TOOLKIT_SECTION, None)  # a source folder's section described the source's encoder
    section = grounding_encoder_section(model)
    if section is not None:
        cfg[TOOLKIT_SECTION] = {"grounding_encoder": section}
    (save_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    model.mllm.tokenizer.save_pretrained(str(save_dir))
    copied: list[str] = _write_processor_files(model.mllm, source_dir, save_dir)
    if source_dir is not None:
        for src in sorted(source_dir.glob("*.py")) + sorted(source_dir.glob("generation_config.json")):
            shutil.copy2(src, save_dir / src.name)
            copied.append(src.name)
        if not any(c.endswith(".py") for c in copied):
            _logger().warning(f"source folder {source_dir} has no remote-code *.py files to copy")
    else:
        _logger().warning(
            f"{save_dir}: no source HF folder, so no remote-code *.py files were copied; add the official "
            f"ones of {config_auto_map_files(cfg)} (and their imports) before "
            "AutoModel.from_pretrained(..., trust_remote_code=True)"
        )
    _logger().info(f"Exported {len(entries)} tensors ({sum(sizes) / 1e9:.2f} GB, {n} shard(s)) to {save_dir}")
    return ExportReport(save_dir, names, len(entries), sum(sizes), copied)


# --- adapter-only export ----------------------------------------------------------------------------
def _trained_outside_lm(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith(LM_PREFIX):
            yield name, p


def export_adapter(model: nn.Module, save_dir: str | Path, key_table: KeyTable | None = None) -> list[str]:
    """Write the LoRA adapter in PEFT format plus the other trained tensors.

    Files: ``adapter_model.safetensors`` + ``adapter_config.json`` (``PeftModel.from_pretrained`` onto the
    base LM of the source folder; includes the ``modules_to_save`` embedding / head copies),
    :data:`ADAPTER_TRAINED_FILE` (trainable tensors outside the LM: ``mlp1``, SAM2 mask decoder,
    ``text_hidden_fcs``..., official names; :data:`EXTENSION_PREFIXES` tensors under model names) and the
    tokenizer. Returns the file names written.
    """
    key_table = key_table or hf_key_table(model.mllm)
    save_dir = Path(save_dir)
    if save_dir.exists() and any(save_dir.iterdir()):
        raise FileExistsError(f"{save_dir} exists and is not empty")
    if not model.mllm.lora_applied:
        raise ValueError("--adapter-only needs a model trained with LoRA (trainable llm='lora')")
    save_dir.mkdir(parents=True, exist_ok=True)
    model.mllm.language_model.save_pretrained(str(save_dir), save_embedding_layers=False)
    trained = {
        (name if name.startswith(EXTENSION_PREFIXES) else key_table.to_format(name)): p.detach()
        .to("cpu")
        .contiguous()
        for name, p in _trained_outside_lm(model)
    }
    save_file(trained, str(save_dir / ADAPTER_TRAINED_FILE), metadata={"format": "pt"})
    model.mllm.tokenizer.save_pretrained(str(save_dir))
    return sorted(p.name for p in save_dir.iterdir())


def load_adapter_export(model: nn.Module, adapter_dir: str | Path, key_table: KeyTable | None = None) -> None:
    """Apply an :func:`export_adapter` folder to a ``Sa2VAModel`` built from the base folder without LoRA.

    The LM is wrapped with ``PeftModel.from_pretrained`` (inference mode) and every tensor of
    :data:`ADAPTER_TRAINED_FILE` is copied in; an unknown or wrongly shaped tensor is an error.
    """
    key_table = key_table or hf_key_table(model.mllm)
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if model.mllm.lora_applied:
        raise ValueError(
            "load_adapter_export needs a model without LoRA (build it with trainable llm='frozen')"
        )
    # Checked here so that a damaged file is named (PEFT's own errors do not always name it).
    read_json_file(adapter_dir / "adapter_config.json", what="the PEFT adapter config")
    with open_safetensors(adapter_dir / "adapter_model.safetensors") as f:
        f.keys()
    file = adapter_dir / ADAPTER_TRAINED_FILE
    with open_safetensors(file) as f:
        f.keys()
    model.mllm.language_model = PeftModel.from_pretrained(model.mllm.language_model, str(adapter_dir))
    model.mllm.lora_applied = True
    targets = _model_tensors(model)
    unexpected, shapes = [], []
    with open_safetensors(file) as f, torch.no_grad():
        for key in list(f.keys()):
            mkey = key if key.startswith(EXTENSION_PREFIXES) else key_table.to_model(key)
            if mkey not in targets:
                unexpected.append(repr(key))
                continue
            t = f.get_tensor(key)
            if tuple(t.shape) != tuple(targets[mkey].shape):
                shapes.append(f"{key!r}: {list(t.shape)} vs model {list(targets[mkey].shape)}")
                continue
            targets[mkey].copy_(t)
    if unexpected or shapes:
        raise CheckpointMismatchError(
            mismatch_message(f"{file} does not match the model:", unexpected, [], shapes)
        )
