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
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import MMLogger

__all__ = ["PACKAGE_CONFIGS", "ConfigFileError", "package_base_imports", "read_config"]

#: The package's own configs folder: ``_base_/``, ``deepspeed/`` and the leaf configs.
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ConfigFileError(ValueError):
    """A config file that cannot be read; the message names the file."""


def _read_base_imports(path: Path) -> list[tuple[int, str]]:
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
    imports = _read_base_imports(path)
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
            return Config.fromfile(str(path))
        except Exception as e:
            raise ConfigFileError(f"{path}: cannot load the config: {type(e).__name__}: {e}") from e
    MMLogger.get_current_instance().info(
        f"{path}: {', '.join(names)} not next to the config: read from {PACKAGE_CONFIGS}"
    )
    folder = path.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix="sa2va_config_"))
    try:
        # The package folder with the file's own folder laid over it (its entries win), so that linked
        # leaves and bases find their own one-dot imports too.
        own = {m.split(".")[0] for level, m in _read_base_imports(path) if level == 1 and m}
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
