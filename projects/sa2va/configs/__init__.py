"""The toolkit's config files; :func:`config_path` finds one from code by its module-style name."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "config_path"]

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """``'sa2va_tiny_demo'`` or ``'_base_/model_tiny'`` -> that ``.py`` file under ``projects/sa2va/configs``.

    Raises:
        FileNotFoundError: no such config file (the message names the path looked for).
    """
    path = CONFIG_DIR / f"{name.removesuffix('.py')}.py"
    if not path.is_file():
        raise FileNotFoundError(f"config {name!r}: {path} not found")
    return path
