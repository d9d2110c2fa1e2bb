"""Reading the files of a Hugging Face folder with errors that name the file and what is wrong with it.

* JSON files (``config.json``, ``model.safetensors.index.json``): invalid JSON is reported with its line
  and column, a value of the wrong kind with its field path.
* ``config.json`` of a Sa2VA folder (:func:`read_hf_config`): the fields that fix the network's shape
  must be present and positive integers, per layout: InternVL (``vision_config`` + ``llm_config``) or
  Qwen-VL (``vision_config`` + ``text_config``). A missing field is an error here, not a default that
  transformers would fill in silently (and that a weight load would then report as hundreds of shape
  mismatches).
* safetensors files (:func:`open_safetensors`): a damaged file is explained from its header (cut short,
  with the byte counts; a header that is not JSON; a header length larger than the file).

It imports nothing from the project, so the model adapters (which read ``config.json``) and the checkpoint
loaders (which read the weights) both use it without ``models`` importing ``checkpoint``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

__all__ = [
    "HFFolderError",
    "check_sa2va_config",
    "open_safetensors",
    "read_hf_config",
    "read_json_file",
    "safetensors_problem",
]

#: Fields of each sub-config that fix tensor shapes (must be positive integers).
INTERNVL_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                          "image_size", "patch_size")  # fmt: skip
LLM_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
QWENVL_VISION_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size")


class HFFolderError(ValueError):
    """A file of a Hugging Face folder is unreadable, damaged or incomplete; the message names the file."""


def read_json_file(path: str | Path, *, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist (named).
        HFFolderError: not UTF-8, not valid JSON (line and column given) or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HFFolderError(f"{path}: not a UTF-8 text file ({what}; byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file ends early: cut short?)" if e.pos >= len(text.rstrip()) else ""
        raise HFFolderError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{cut} ({what})"
        ) from None
    if not isinstance(data, dict):
        raise HFFolderError(f"{path}: expected a JSON object ({what}), found a {type(data).__name__}")
    return data


def _check_fields(section: Any, name: str, fields: tuple[str, ...], file: Path) -> None:
    if not isinstance(section, dict):
        raise HFFolderError(f"{file}: `{name}` must be an object, found {type(section).__name__}")
    missing = [f for f in fields if f not in section]
    if missing:
        raise HFFolderError(
            f"{file}: `{name}` lacks {', '.join(f'`{name}.{f}`' for f in missing)} "
            "(needed to build the model)"
        )
    for f in fields:
        value = section[f]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise HFFolderError(f"{file}: `{name}.{f}` must be a positive integer, found {value!r}")


def check_sa2va_config(cfg: dict[str, Any], file: str | Path) -> None:
    """Check the shape-defining fields of a Sa2VA / InternVL / Qwen-VL ``config.json`` (see module doc).

    Raises:
        HFFolderError: neither layout, a section that is not an object, a missing or non-positive field.
    """
    file = Path(file)
    if "text_config" in cfg:  # Qwen-VL: the Sa2VA config is the Qwen-VL config
        _check_fields(cfg["text_config"], "text_config", LLM_FIELDS, file)
        _check_fields(cfg.get("vision_config"), "vision_config", QWENVL_VISION_FIELDS, file)
        return
    if "llm_config" in cfg or "vision_config" in cfg:  # InternVL
        _check_fields(cfg.get("vision_config"), "vision_config", INTERNVL_VISION_FIELDS, file)
        _check_fields(cfg.get("llm_config"), "llm_config", LLM_FIELDS, file)
        return
    raise HFFolderError(
        f"{file}: neither an InternVL-layout config (`vision_config` + `llm_config`) nor a Qwen-VL one "
        f"(`vision_config` + `text_config`); top-level fields: {sorted(cfg)[:20]}"
    )


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a Sa2VA / InternVL / Qwen-VL folder, checked by :func:`check_sa2va_config`.

    Raises:
        FileNotFoundError: no ``config.json`` in ``path``.
        HFFolderError: invalid JSON or a missing / wrong shape field (file, field and value named).
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: `path` must be a Hugging Face model folder")
    cfg = read_json_file(file, what="the model's config.json")
    check_sa2va_config(cfg, file)
    return cfg


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file, read from its header and size; None if nothing is found.

    Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (``{name: {dtype, shape,
    data_offsets: [begin, end]}}`` plus ``__metadata__``), then the tensor data.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors file (8-byte header length, then JSON)"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return (
                f"the header length field says {n} bytes but the file holds {size} bytes in all: "
                "cut short inside the header, or not a safetensors file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"the {n}-byte header is not valid JSON ({e}): damaged"
    if not isinstance(header, dict):
        return f"the header is a JSON {type(header).__name__}, not an object: damaged"
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
    ]
    expected = 8 + n + max(ends, default=0)
    if expected > size:
        return (
            f"cut short: its header describes {len(ends)} tensor(s) ending at byte {expected}, the file has "
            f"{size} bytes ({expected - size} missing)"
        )
    if expected < size:
        return f"{size - expected} bytes after the last tensor its header describes: damaged"
    return None


@contextmanager
def open_safetensors(path: str | Path, *, device: str = "cpu") -> Iterator[Any]:
    """``safe_open(path, framework='pt')`` whose errors name the file and explain the damage.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        HFFolderError: the file cannot be opened as safetensors (see :func:`safetensors_problem`), or a
            tensor cannot be read (the tensor's name is given).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (safetensors file)")
    try:
        handle = safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError) as e:
        problem = safetensors_problem(path) or f"safetensors: {e}"
        raise HFFolderError(f"{path}: not a readable safetensors file: {problem}") from None
    with handle as f:
        try:
            yield _NamedHandle(f, path)
        except SafetensorError as e:
            raise HFFolderError(f"{path}: {e}") from None


class _NamedHandle:
    """A safetensors handle whose ``get_tensor`` / ``get_slice`` errors name the file and the tensor."""

    def __init__(self, handle: Any, path: Path) -> None:
        self._h = handle
        self._path = path

    def keys(self) -> list[str]:
        return list(self._h.keys())

    def metadata(self) -> dict[str, str] | None:
        return self._h.metadata()

    def get_tensor(self, name: str) -> Any:
        try:
            return self._h.get_tensor(name)
        except SafetensorError as e:
            raise HFFolderError(f"{self._path}: tensor {name!r} cannot be read: {e}") from None

    def get_slice(self, name: str) -> Any:
        try:
            return self._h.get_slice(name)
        except SafetensorError as e:
            raise HFFolderError(f"{self._path}: tensor {name!r} cannot be read: {e}") from None
