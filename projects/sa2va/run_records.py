"""Results of a long run written as they come, so that a killed run keeps its work and a rerun with
``--skip-existing`` redoes only the rest (``tools/predict.py``, ``tools/test.py``).

Three pieces, all import-light (no torch):

* :func:`check_settings` keeps the settings that decide the numbers (model config, checkpoint
  contents, threshold, ...) in a JSON file of the output folder. A fresh run writes it; a run with
  ``skip_existing`` compares its own settings with the stored ones and raises
  :class:`SettingsMismatchError` naming every difference, so results of two different runs are
  never mixed.
* :class:`RunRecords` appends one JSON line per finished item to a ``.jsonl`` file (flushed and
  fsynced at once). Each line holds the item's key, the digest of its input, its record, the
  SHA-256 of every output file it names, and a check digest of the line itself. On reuse a line is
  trusted only when it parses, its check digest matches, its input digest equals the current
  input's and every file it names exists with the recorded digest; anything else is logged and the
  item is recomputed. Output files are written first (:func:`write_atomic`: a temporary file
  renamed over the target), the line last, so a run killed in between leaves no line that names a
  half-written file.
* :func:`progress_bar`: a tqdm bar (count, rate, ETA) on stderr; outside a terminal it redraws at
  most every 30 s (and when a line is written through ``tqdm.write``), so log files get a line now
  and then instead of one per item.

Files of one :class:`RunRecords` ``<folder>/<name>.jsonl``; under torchrun rank ``r > 0`` appends to
``<folder>/<name>.rank<r>.jsonl`` and every file is read on reuse (the world size may change
between runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "RECORDS_VERSION",
    "RunRecords",
    "SettingsMismatchError",
    "bytes_digest",
    "check_settings",
    "config_digest",
    "file_digest",
    "iter_batches",
    "json_digest",
    "path_digest",
    "progress_bar",
    "save_image_atomic",
    "write_atomic",
]

RECORDS_VERSION = 1
_CHUNK = 1 << 20


class SettingsMismatchError(ValueError):
    """``--skip-existing`` on an output folder written with other settings (the message lists them)."""


def _logger() -> Any:
    from mmengine.logging import MMLogger  # imported on use: mmengine pulls in torch

    return MMLogger.get_current_instance()


# -- digests ----------------------------------------------------------------------------------------
def bytes_digest(data: bytes) -> str:
    """SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def path_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder: every file below it (sorted relative path, size and
    contents), so that a moved or copied checkpoint keeps its digest and an edited one does not.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist")
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def _json_default(obj: Any) -> str:
    """Classes and functions of pure-Python configs by dotted name (``repr`` would hold an address)."""
    name = getattr(obj, "__qualname__", None)
    if name is not None:
        return f"{getattr(obj, '__module__', '?')}.{name}"
    return repr(obj)


def json_digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; classes and functions by dotted name)."""
    return bytes_digest(json.dumps(obj, sort_keys=True, default=_json_default).encode())


#: Dataset fields that do not change what a model predicts for an image (paths and sampling).
_DATASET_FIELDS_IGNORED = frozenset(
    {"ann_file", "image_root", "data_root", "repeats", "augment", "objects_per_image", "random_templates"}
)


def config_digest(cfg: Any) -> str:
    """Digest of what an mmengine config decides about predictions: ``model``, ``template`` and the
    fields of the test, val and train datasets other than paths and sampling (tiling, image sizes,
    tokenizer, templates).

    Args:
        cfg: an ``mmengine.config.Config`` (or a mapping with the same keys).
    """
    as_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    datasets = {}
    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (as_dict.get(loader) or {}).get("dataset") or {}
        datasets[loader] = {k: v for k, v in dataset.items() if k not in _DATASET_FIELDS_IGNORED}
    return json_digest({"model": as_dict.get("model"), "template": as_dict.get("template"), **datasets})


# -- files ------------------------------------------------------------------------------------------
def write_atomic(path: str | Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same folder renamed over it (a reader
    sees the old file or the new one, never a part); returns the SHA-256 of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return bytes_digest(data)


def save_image_atomic(image: Any, path: str | Path) -> str:
    """Save a PIL image as PNG through :func:`write_atomic`; returns the file's SHA-256."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


# -- settings ---------------------------------------------------------------------------------------
def check_settings(
    path: str | Path,
    settings: Mapping[str, Any],
    *,
    skip_existing: bool,
    info: Mapping[str, Any] | None = None,
    write: bool = True,
) -> None:
    """Compare ``settings`` with those stored at ``path`` (``skip_existing``), then store them.

    Args:
        path: the settings JSON of an output folder.
        settings: JSON-able values that decide the results (digests, thresholds, flags); compared.
        skip_existing: results already in the folder are to be reused: the stored settings must exist
            (when any record file sits next to them) and equal ``settings``.
        info: JSON-able values stored for the reader but not compared (paths, batch size).
        write: store the settings (rank 0 only under torchrun).

    Raises:
        SettingsMismatchError: stored settings that differ (every differing key named with both
            values), or that cannot be read.
    """
    path = Path(path)
    now = json.loads(json.dumps(dict(settings), sort_keys=True, default=_json_default))
    if skip_existing and path.exists():
        try:
            stored = json.loads(path.read_text())["settings"]
            if not isinstance(stored, dict):
                raise TypeError(f"'settings' is a {type(stored).__name__}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SettingsMismatchError(
                f"{path}: cannot read the stored run settings ({e}); rerun without --skip-existing to "
                "recompute everything"
            ) from e
        diffs = [
            f"{key}: stored {stored.get(key, '<absent>')!r}, now {now.get(key, '<absent>')!r}"
            for key in sorted(set(stored) | set(now))
            if stored.get(key, "<absent>") != now.get(key, "<absent>")
        ]
        if diffs:
            raise SettingsMismatchError(
                f"--skip-existing: the results in {path.parent} were computed with other settings "
                f"({path.name}):\n  " + "\n  ".join(diffs) + "\nUse the same settings, another "
                "--out-dir, or rerun without --skip-existing to recompute everything."
            )
    elif skip_existing and any(path.parent.glob("*.jsonl")):
        raise SettingsMismatchError(
            f"--skip-existing: {path.parent} holds result records but no settings file {path.name}; "
            "they cannot be checked, so they are not reused: rerun without --skip-existing"
        )
    if write:
        body = {"version": RECORDS_VERSION, "settings": now, "info": dict(info or {})}
        text = json.dumps(body, indent=2, sort_keys=True, default=_json_default) + "\n"
        write_atomic(path, text.encode())


# -- records ----------------------------------------------------------------------------------------
def _line_check(key: str, input_digest: str, record: Any, files: Mapping[str, str]) -> str:
    return json_digest({"key": key, "input": input_digest, "record": record, "files": dict(files)})


class RunRecords:
    """One JSON line per finished item, appended as it finishes; reusable by a later run.

    Args:
        folder: where the ``.jsonl`` files live (created). Output file names in records are relative
            to ``files_root`` (default ``folder``).
        name: base name of the ``.jsonl`` files.
        fresh: remove every ``<name>*.jsonl`` first (a run without ``--skip-existing``); only rank 0
            does it, before the other ranks open theirs.
        rank: this process's rank (rank ``r > 0`` appends to ``<name>.rank<r>.jsonl``).
    """

    def __init__(
        self,
        folder: str | Path,
        name: str,
        *,
        fresh: bool,
        rank: int = 0,
        files_root: str | Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.files_root = Path(files_root) if files_root is not None else self.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / (f"{name}.jsonl" if rank == 0 else f"{name}.rank{rank}.jsonl")
        if fresh and rank == 0:
            for old in self._files():
                old.unlink()

    def _files(self) -> list[Path]:
        return sorted(
            p for p in self.folder.glob(f"{self.name}*.jsonl") if p.name == f"{self.name}.jsonl" or
            (p.name.startswith(f"{self.name}.rank") and p.name[len(self.name) + 5 : -6].isdigit())
        )  # fmt: skip

    def reusable(self, inputs: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """The stored records that can be trusted, for the keys of ``inputs``.

        Args:
            inputs: ``{key: input digest}`` of the current run's items.

        Returns:
            ``{key: record}`` for the items whose line is complete and unaltered, whose input digest
            equals ``inputs[key]`` and whose output files are intact. Every other stored line of a
            key in ``inputs`` is logged with the reason (the item is then recomputed); lines of keys
            not in ``inputs`` are ignored.
        """
        found: dict[str, dict[str, Any]] = {}
        digests: dict[Path, str] = {}
        for file in self._files():
            with open(file, encoding="utf-8", errors="replace") as f:
                lines = f.read().split("\n")
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{file}: line {number}"
                try:
                    entry = json.loads(line)
                    key, input_digest = entry["key"], entry["input"]
                    record, files = entry["record"], entry["files"]
                    check = entry["check"]
                except (ValueError, KeyError, TypeError):
                    _logger().warning(f"{where}: not a complete record (a killed write?): ignored")
                    continue
                if key not in inputs or key in found:
                    continue
                if check != _line_check(key, input_digest, record, files):
                    _logger().warning(f"{where}: record of {key!r} altered (check digest): recomputed")
                    continue
                if input_digest != inputs[key]:
                    _logger().warning(f"{where}: the input of {key!r} changed since: recomputed")
                    continue
                bad = self._bad_file(files, digests)
                if bad:
                    _logger().warning(f"{where}: output of {key!r} {bad}: recomputed")
                    continue
                found[key] = record
        return found

    def _bad_file(self, files: Mapping[str, str], cache: dict[Path, str]) -> str | None:
        for name, want in files.items():
            path = self.files_root / name
            if not path.is_file():
                return f"{path} is missing"
            if path not in cache:
                cache[path] = file_digest(path)
            if cache[path] != want:
                return f"{path} differs from the recorded file (SHA-256)"
        return None

    def append(self, key: str, input_digest: str, record: Any, files: Mapping[str, str]) -> None:
        """Append the line of a finished item (its output ``files`` ``{name: SHA-256}`` already written)."""
        record = json.loads(json.dumps(record, default=_json_default))  # as it will read back
        files = dict(files)
        line = {
            "key": key,
            "input": input_digest,
            "record": record,
            "files": files,
            "check": _line_check(key, input_digest, record, files),
        }
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


# -- progress ---------------------------------------------------------------------------------------
def progress_bar(total: int, *, desc: str, initial: int = 0, unit: str = "img", enabled: bool = True) -> Any:
    """A tqdm bar on stderr (count, rate, ETA), or a no-op object when ``enabled`` is False.

    ``initial``: items already done (reused), shown in the count but not in the rate. Outside a
    terminal the bar is redrawn at most every 30 s (tqdm writes a carriage-return line per redraw).
    """
    from tqdm import tqdm  # a dependency of transformers, huggingface-hub and peft

    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=tty,
        disable=not enabled,
    )


def iter_batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
