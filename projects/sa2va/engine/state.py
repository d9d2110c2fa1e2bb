"""Crash-safe training state: atomic file writes, per-rank random state, finding the latest checkpoint.

A checkpoint file at its final name is always complete: it is written to a temporary file in the same
directory, flushed to disk and renamed with ``os.replace`` (atomic on POSIX within one file system).
The ``last_checkpoint`` pointer of mmengine is written the same way.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import MMLogger

CKPT_NAME = re.compile(r"^(iter|epoch)_(\d+)\.pth$")
POINTER_NAME = "last_checkpoint"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a file system that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one.

    The bytes go to a hidden temporary file in the same directory (``.<name>.tmp-*``), which is fsynced
    and then renamed over ``path``; on any error the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def capture_rng_state() -> dict[str, Any]:
    """This process's random state (python, numpy, torch CPU, current CUDA device) as plain objects.

    Everything is a tensor, int, float, tuple or None, so it loads under ``torch.load(weights_only=True)``.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    # .cpu(): a resume with mmengine's map_location='default' puts the checkpoint's tensors on the GPU.
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(n["pos"]), int(n["has_gauss"]), float(n["gauss"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def checkpoint_step(path: str | Path) -> int | None:
    """The iteration/epoch number in an mmengine checkpoint name (``iter_40.pth`` -> 40), else None."""
    m = CKPT_NAME.match(Path(path).name)
    return int(m.group(2)) if m else None


#: ``meta`` keys of the checkpoint that the non-finite-loss stop saves (``Sa2VARunner.train``): the flag, and
#: the 0-based first iteration of the run of non-finite losses that stopped training.
NONFINITE_STOP_KEY = "nonfinite_stop"
NONFINITE_FROM_KEY = "nonfinite_from"


def nonfinite_tensor_names(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinity."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _optimizer_tensors(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The optimiser state's tensors of an mmengine checkpoint (``optimizer.state[i][name]``) by a label."""
    state = ckpt.get("optimizer", {}).get("state", {}) if isinstance(ckpt.get("optimizer"), dict) else {}
    return {
        f"optimizer.state[{i}].{name}": v
        for i, entry in state.items()
        if isinstance(entry, dict)
        for name, v in entry.items()
        if isinstance(v, torch.Tensor)
    }


def _resume_verdict(path: Path) -> tuple[str | None, dict[str, Any]]:
    """``(why path must not be resumed from or None, its meta)``: damaged, saved by the non-finite stop,
    or holding non-finite weights / optimiser state. Tensors are memory-mapped, not read into memory."""
    from ..checkpoint.safe_load import (
        CorruptCheckpointError,
        RefusedCheckpointError,
        checkpoint_is_intact,
        load_checkpoint_file,
        trainable_state_from_checkpoint,
    )

    if not checkpoint_is_intact(path):
        return "is damaged or incomplete", {}
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except (CorruptCheckpointError, RefusedCheckpointError) as e:
        return f"cannot be loaded ({e})", {}
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    if meta.get(NONFINITE_STOP_KEY):
        return "was saved by the non-finite-loss stop (its weights led to non-finite losses)", meta
    bad = nonfinite_tensor_names(trainable_state_from_checkpoint(ckpt))
    bad += nonfinite_tensor_names(_optimizer_tensors(ckpt))
    if bad:
        return f"holds non-finite values in {len(bad)} tensor(s) (e.g. {bad[:3]})", meta
    return None, meta


def find_resumable_checkpoint(work_dir: str | Path, *, before_step: int | None = None) -> str | None:
    """The checkpoint that ``--resume auto`` should load from ``work_dir``, or None for a fresh start.

    The newest checkpoint that is intact and whose weights are finite. The ``last_checkpoint`` pointer
    wins when it names such a file in ``work_dir`` (one that names a file elsewhere, as in a copied work
    dir, is read as the same-named file here). Otherwise (no pointer, an empty or cut pointer, one naming
    a deleted or unusable file) the ``iter_N.pth`` / ``epoch_N.pth`` files are tried from the newest, and
    each one passed over is named in a warning with the reason:

    * damaged: not a complete zip archive whose members' CRCs check (:func:`checkpoint_is_intact`);
    * saved by the non-finite-loss stop (``meta['nonfinite_stop']``), and every checkpoint of a step
      ``>= meta['nonfinite_from']`` (its first non-finite iteration) written no later than that stop's
      file: updates were skipped from then on, so they hold the same weights that diverged;
    * a NaN or infinity in a trained tensor or in the optimiser state.

    Temporary files of an interrupted save (``.iter_N.pth.partial-*``, ``.*.tmp-*``) are never candidates.

    Args:
        work_dir: the run's work dir.
        before_step: only checkpoints of a step ``< before_step`` (the pointer is then not used).
    """
    logger = MMLogger.get_current_instance()
    work_dir = Path(work_dir)
    pointer = work_dir / POINTER_NAME
    if pointer.is_file() and before_step is None:
        target = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if target and Path(target).resolve().parent != work_dir.resolve():
            # A copied or moved work dir: its pointer names the original folder's file. Never resume from
            # another run's folder: the same-named file here, else the iter_*/epoch_* files here.
            local = work_dir / Path(target).name
            logger.warning(
                f"{pointer} names {target}, outside {work_dir} (a copied or moved work dir?): "
                + (f"using {local}" if local.is_file() else "looking for iter_*/epoch_* files here")
            )
            target = str(local) if local.is_file() else ""
        if target and Path(target).is_file():
            why, _ = _resume_verdict(Path(target))
            if why is None:
                return target
            logger.warning(f"{pointer} names {target}, which {why}; looking for an older checkpoint")
        else:
            logger.warning(
                f"{pointer} names {target!r}, which is not a file; looking for iter_*/epoch_* files"
            )
    candidates = sorted(
        (p for p in work_dir.glob("*.pth") if checkpoint_step(p) is not None and p.is_file()),
        key=lambda p: (checkpoint_step(p), p.stat().st_mtime),
    )
    if before_step is not None:
        candidates = [p for p in candidates if checkpoint_step(p) < before_step]
    diverged: list[tuple[int, float, Path]] = []  # (first non-finite iteration, stop file mtime, stop file)
    for path in reversed(candidates):
        step, mtime = checkpoint_step(path), path.stat().st_mtime
        stop = next(((f, s) for f, t, s in diverged if step >= f and mtime <= t), None)
        if stop is not None:
            logger.warning(
                f"--resume auto: passing over {path}: saved during the non-finite losses that stopped "
                f"training at {stop[1].name} (from iteration {stop[0]} on, the same weights)"
            )
            continue
        why, meta = _resume_verdict(path)
        if why is None:
            return str(path)
        logger.warning(f"--resume auto: passing over {path}, which {why}; trying an older checkpoint")
        if meta.get(NONFINITE_STOP_KEY) and isinstance(meta.get(NONFINITE_FROM_KEY), int):
            diverged.append((int(meta[NONFINITE_FROM_KEY]), mtime, path))
    return None


def nonfinite_stop_message(model: torch.nn.Module, saved: str, earlier: str | None) -> str:
    """What the non-finite-loss stop saved in ``saved`` and where to go on from (``earlier``: the newest
    usable checkpoint before the non-finite losses began, or None); never advises the diverged weights."""
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    largest = max((float(t.abs().max()) for t in trained.values() if t.numel()), default=0.0)
    bad = nonfinite_tensor_names(trained)
    state = (
        f"they are finite (largest trained |weight| = {largest:.3g}) but led to non-finite losses"
        if not bad
        else f"{len(bad)} trained tensor(s) are non-finite themselves (e.g. {bad[:3]}; largest trained "
        f"|weight| = {largest:.3g}): the last update before the stop produced them"
    )
    text = (
        f"stopped on non-finite losses. {saved} holds the weights of the last update with a finite loss "
        f"(the non-finite iterations' updates were skipped); {state}. Kept for inspection: do not resume "
        "from them (automatic resume passes over this file and the checkpoints saved during these "
        "non-finite losses): "
    )
    if earlier is not None:
        return text + (
            f"the previous checkpoint is {earlier}; resume from it with `--resume {earlier}` after "
            "lowering the learning rate (or changing what diverged)"
        )
    return text + "no earlier checkpoint exists; restart from scratch with a lower learning rate"


#: Temporary file of a checkpoint save in progress (``Sa2VARunner.save_checkpoint``): ``.NAME.partial-PID``.
_PARTIAL_NAME = re.compile(r"^\..+\.(partial)-(\d+)$")


def remove_stale_partials(work_dir: str | Path) -> list[Path]:
    """Delete temporary files of saves that were killed (their writing process is gone); returns them.

    A file whose process id is still alive (e.g. another run saving into the same folder) is kept.
    """
    removed: list[Path] = []
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return removed
    for path in work_dir.iterdir():
        m = _PARTIAL_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        MMLogger.get_current_instance().warning(
            f"removed {len(removed)} partial file(s) of interrupted saves in {work_dir}: "
            f"{', '.join(p.name for p in removed)}"
        )
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_HB_TAG = "__history_buffer__"


def encode_message_hub(state: dict[str, Any]) -> dict[str, Any]:
    """``MessageHub.state_dict()`` with each ``HistoryBuffer`` replaced by a plain dict.

    A pickled ``HistoryBuffer`` (mmengine 0.10.6) carries its statistics functions, pickled as
    ``getattr(HistoryBuffer, 'mean')``; allowing ``getattr`` in ``torch.load(weights_only=True)`` would
    defeat the allow-list, so checkpoints store the buffers' arrays instead.
    """
    from mmengine.logging import HistoryBuffer

    scalars = state.get("log_scalars", {})
    out = dict(state)
    out["log_scalars"] = type(scalars)(
        (
            k,
            {
                _HB_TAG: True,
                "log_history": v._log_history,
                "count_history": v._count_history,
                "max_length": v.max_length,
            }
            if isinstance(v, HistoryBuffer)
            else v,
        )
        for k, v in scalars.items()
    )
    return out


def decode_message_hub(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_message_hub` (a state without encoded buffers is returned unchanged)."""
    from mmengine.logging import HistoryBuffer

    scalars = state.get("log_scalars", {})
    out = dict(state)
    out["log_scalars"] = type(scalars)(
        (
            k,
            HistoryBuffer(list(v["log_history"]), list(v["count_history"]), v["max_length"])
            if isinstance(v, dict) and v.get(_HB_TAG)
            else v,
        )
        for k, v in scalars.items()
    )
    return out
