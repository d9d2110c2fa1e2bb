"""The conversion behind ``tools/convert_to_pth.py`` (``tools/convert_to_hf.py`` runs
:func:`projects.sa2va.engine.export.convert_to_hf`, which builds the model first)."""

from __future__ import annotations

from pathlib import Path

from .reference_pth import hf_folder_to_reference_pth

__all__ = ["convert_to_reference_pth"]


def convert_to_reference_pth(hf_dir: str | Path, out_file: str | Path) -> int:
    """Official HF folder -> reference-style full ``.pth`` (usable as ``pretrained_pth``)."""
    return hf_folder_to_reference_pth(hf_dir, out_file)
