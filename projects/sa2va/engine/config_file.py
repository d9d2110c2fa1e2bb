"""Read a config file, also one copied out of ``projects/sa2va/configs/`` (mmengine 0.10.6 ``Config``).

Leaf configs inherit their parts with mmengine's pure-Python form::

    with read_base():
        from ._base_.dataset_refseg import *

mmengine resolves such a relative import against the folder of the file being read, so a leaf config
copied to a folder of one's own finds no ``_base_/`` there (``_base_/dataset_refseg.py not found``); the
package-absolute form (``from projects.sa2va.configs._base_... import *``) needs ``pkg_resources``, which
current setuptools no longer ships. :func:`read_config` therefore reads a config whose one-dot imports name
something missing next to it (``_base_`` or a sibling leaf such as ``sa2va_tiny_demo``) as if it lay in
the package's configs folder, with its own folder laid over that one (a copied ``_base_/`` folder or leaf
next to it wins): a temporary folder of links, removed after reading. Everything else (relative data
paths, ``--cfg-options``) is unchanged.

A config that loads an official Hugging Face folder names it once, in the top-level ``path``: mmengine's
pure-Python configs copy dicts when a leaf imports its bases, so a leaf's ``path = ...`` does not reach the
dicts the bases built. :func:`apply_model_path` (called by
:func:`~projects.sa2va.engine.builder.load_config`, after ``--cfg-options``) writes it into every field of
:data:`MODEL_FOLDER_FIELDS` that the config has.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import MMLogger

__all__ = [
    "MODEL_FOLDER_FIELDS",
    "PACKAGE_CONFIGS",
    "ConfigFileError",
    "apply_model_path",
    "package_base_imports",
    "read_base_imports",
    "read_config",
]

#: The package's own configs folder: ``_base_/``, ``deepspeed/`` and the leaf configs.
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ConfigFileError(ValueError):
    """A config file that cannot be read; the message names the file."""


#: The fields that hold the model's Hugging Face folder, filled from the top-level ``path`` by
#: :func:`apply_model_path`: the tokenizer, the processor (the config's, the ``dataset_inputs`` copy and each
#: dataloader's dataset's), the MLLM adapter and its tokenizer, and the weight loader.
MODEL_FOLDER_FIELDS: tuple[str, ...] = (
    "tokenizer.path",
    "processor.path",
    "dataset_inputs.processor.path",
    "model.mllm.path",
    "model.mllm.tokenizer.path",
    "model.load_weights.path",
    "train_dataloader.dataset.processor.path",
    "val_dataloader.dataset.processor.path",
    "test_dataloader.dataset.processor.path",
)


def apply_model_path(cfg: Config) -> list[str]:
    """Write the top-level ``cfg.path`` into every field of :data:`MODEL_FOLDER_FIELDS` the config has.

    A field counts as present when the dict that holds it is in the config (e.g. ``model.load_weights``
    of an HF config; a random-weight config has none, and a dataset whose ``processor`` is not set is
    skipped). A field that already holds the same folder (or ``None``) is fine; a config without a
    top-level ``path`` (or with ``path = None``) is returned unchanged.

    Returns:
        the fields written (dotted names).

    Raises:
        ConfigFileError: a field holds another folder than ``path`` (set twice, differently); the
            message names the config, the fields and both values.
    """
    path = cfg.get("path")
    if path is None:
        return []
    written, conflicts = [], []
    for field in MODEL_FOLDER_FIELDS:
        *parents, key = field.split(".")
        node = cfg.get(parents[0])
        for name in parents[1:]:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        current = node.get(key)
        if current is not None and str(current) != str(path):
            conflicts.append(f"{field} = {current!r}")
            continue
        node[key] = path
        written.append(field)
    if conflicts:
        raise ConfigFileError(
            f"{cfg.filename or 'the config'}: the model folder is set twice: path = {path!r}, but "
            f"{', '.join(conflicts)}. Set only the top-level `path` (the config loader writes it into "
            f"{', '.join(MODEL_FOLDER_FIELDS)})"
        )
    return written


def read_base_imports(path: Path) -> list[tuple[int, str]]:
    """``(level, module)`` of every ``from <module> import ...`` inside ``with read_base():`` in ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        raise ConfigFileError(f"{path}: cannot read the config: {type(e).__name__}: {e}") from e
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        if not any(
            isinstance(item.context_expr, ast.Call)
            and getattr(item.context_expr.func, "id", None) == "read_base"
            for item in node.items
        ):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom):
                out.append((stmt.level, stmt.module or ""))
    return out


def _entry(folder: Path, name: str) -> Path | None:
    """``folder/name`` (a folder) or ``folder/name.py``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.py"):
        if candidate.exists():
            return candidate
    return None


def package_base_imports(path: str | Path) -> list[str]:
    """The one-dot ``read_base`` import names of ``path`` that are missing next to it and that the package's
    configs folder has (empty for a file inside that folder, or when every import is found next to it).

    Raises:
        ConfigFileError: the file cannot be parsed, or it also imports with two or more dots (``from ..x``):
            such a file must stay where it is.
    """
    path = Path(path)
    folder = path.resolve().parent
    if folder == PACKAGE_CONFIGS:
        return []
    imports = read_base_imports(path)
    tops = {m.split(".")[0] for level, m in imports if level == 1 and m}
    missing = sorted(name for name in tops if _entry(folder, name) is None)
    if not missing:
        return []
    unknown = [name for name in missing if _entry(PACKAGE_CONFIGS, name) is None]
    deep = sorted({m for level, m in imports if level > 1})
    if unknown or deep:
        return []  # mmengine's own error names what it cannot find
    return missing


def read_config(path: str | Path) -> Config:
    """``Config.fromfile(path)``; a config copied out of the package reads its missing one-dot bases from
    :data:`PACKAGE_CONFIGS` (see the module docstring). ``cfg.filename`` is ``path`` either way.

    Raises:
        FileNotFoundError: no such file.
        ConfigFileError: the file (or a base it imports) cannot be parsed; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    names = package_base_imports(path)
    if not names:
        try:
            cfg = Config.fromfile(str(path))
        except Exception as e:
            raise ConfigFileError(f"{path}: cannot load the config: {type(e).__name__}: {e}") from e
        return cfg
    MMLogger.get_current_instance().info(
        f"{path}: {', '.join(names)} not next to the config: read from {PACKAGE_CONFIGS}"
    )
    folder = path.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix="sa2va_config_"))
    try:
        # The package folder with the file's own folder laid over it (its entries win), so that linked
        # leaves and bases find their own one-dot imports too.
        own = {m.split(".")[0] for level, m in read_base_imports(path) if level == 1 and m}
        entries = {p.name for p in PACKAGE_CONFIGS.iterdir() if p.name != "__pycache__"}
        entries |= {e.name for name in own if (e := _entry(folder, name)) is not None}
        for name in sorted(entries - {path.name}):
            source = folder / name if (folder / name).exists() else PACKAGE_CONFIGS / name
            (tmp / name).symlink_to(source.resolve(), target_is_directory=source.is_dir())
        copy = tmp / path.name
        shutil.copyfile(path, copy)
        try:
            cfg = Config.fromfile(str(copy))
        except Exception as e:
            raise ConfigFileError(f"{path}: cannot load the config: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # mmengine 0.10.6 keeps the file name in `_filename` (read by Runner for the experiment name and the
    # dumped config's file name): the user's file, not the temporary copy.
    object.__setattr__(cfg, "_filename", str(path))
    return cfg
