"""``torch.load(weights_only=True)`` for mmengine training checkpoints.

An mmengine checkpoint holds, beside tensors, the message hub (``HistoryBuffer`` objects with numpy
arrays) and numpy scalars in its ``meta``. torch >= 2.6 refuses those under ``weights_only=True``;
instead of falling back to unrestricted unpickling, the few classes that mmengine writes are
allow-listed here, explicitly.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _numpy_globals() -> list[Any]:
    """numpy functions/classes that pickled arrays and scalars reference."""
    out: list[Any] = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out += [_reconstruct, scalar]
    # dtype classes such as numpy.dtypes.Float64DType are pickled by reference too.
    out += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    return out


def mmengine_safe_globals() -> list[Any]:
    """Everything besides tensors and builtins that an mmengine checkpoint may contain."""
    return [HistoryBuffer, *_numpy_globals()]


def trainable_file_name(filename: str) -> str:
    """Weights-only file beside a DeepSpeed checkpoint: ``iter_8.pth`` -> ``iter_8_trainable.pth``."""
    return filename.removesuffix(".pth") + "_trainable.pth"


def check_not_deepspeed_dir(path: str | Path) -> None:
    """Raise ``ValueError`` when ``path`` is a DeepSpeed checkpoint directory (``iter_N.pth/``), naming the
    weights-only file written next to it (``--deepspeed`` runs, see ``engine/flexible_runner.py``)."""
    path = Path(path)
    if path.is_dir() and any(path.glob("mp_rank_*_model_states.pt")):
        raise ValueError(
            f"{path} is a DeepSpeed checkpoint directory (for --resume only); load "
            f"{path.parent / trainable_file_name(path.name)}, "
            "the trainable tensors written next to it"
        )


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is damaged (cut short, not a PyTorch file, bad archive); message names it."""


class RefusedCheckpointError(RuntimeError):
    """A checkpoint holds objects outside the weights-only allow-list; message names file and objects."""


def _refused_objects(message: str) -> list[str]:
    """The ``GLOBAL module.name`` entries PyTorch's weights-only unpickler names in its message."""
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def load_checkpoint_file(
    path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict:
    """Load a ``.pth`` written by mmengine (or a bare state dict) with ``weights_only=True``.

    ``mmap=True`` maps the tensors' storage from the file instead of reading it (for a look at ``meta``
    or a pass over the values without holding a second copy).

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptCheckpointError: the file is cut short or not a PyTorch checkpoint.
        RefusedCheckpointError: the file holds objects outside the allow-list (named; such a file
            is not loaded at all, since unpickling arbitrary objects can run code).
    """
    path = Path(path)
    check_not_deepspeed_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            text = str(e)
            names = _refused_objects(text)
            if names:  # a well-formed pickle naming a class the allow-list does not hold
                raise RefusedCheckpointError(
                    f"{path}: holds objects outside the weights-only allow-list ({', '.join(names)}); "
                    "it was not loaded. "
                    "Checkpoints written by this toolkit hold only tensors and the allow-listed mmengine "
                    "classes: was this file written by another program?"
                ) from None
            # PyTorch's text around the unpickler's own error advises weights_only=False: keep only the error.
            detail = (
                text.split("Unpickler error:")[-1].strip().splitlines()[0][:200]
                if "Unpickler error:" in text
                else ""
            )
            raise CorruptCheckpointError(
                f"{path}: damaged or incomplete checkpoint (not a readable PyTorch file"
                f"{': ' + detail if detail else ''}); use an earlier checkpoint"
            ) from None
        except Exception as e:  # torch raises RuntimeError / EOFError / KeyError / ... for damaged files
            first = str(e).split(". ")[0].splitlines()[0][:200] if str(e) else ""
            raise CorruptCheckpointError(
                f"{path}: damaged or incomplete checkpoint ({path.stat().st_size} bytes; "
                f"{type(e).__name__}: {first}); use an earlier checkpoint"
            ) from None
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_is_intact(path: str | Path) -> bool:
    """Whether ``path`` is a complete PyTorch zip archive (every member's CRC checked; nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return False


def trainable_state_from_checkpoint(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint (``state_dict`` entry or the dict itself), ``module.`` stripped."""
    sd = ckpt.get("state_dict", ckpt)
    return {k.removeprefix("module."): v for k, v in sd.items()}
