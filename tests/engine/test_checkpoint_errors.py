"""Checkpoint errors: damaged vs refused told apart (never advising weights_only=False), ``--resume auto``
past a damaged newest checkpoint, stale partial files of killed saves removed."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from projects.sa2va.checkpoint.safe_load import (
    CorruptCheckpointError,
    RefusedCheckpointError,
    checkpoint_is_intact,
    load_checkpoint_file,
)
from projects.sa2va.engine.state import POINTER_NAME, find_resumable_checkpoint, remove_stale_partials


class NotAllowed:
    """A class outside the allow-list (pickled by reference)."""


def save(path: Path, value: float = 0.0) -> Path:
    torch.save({"state_dict": {"w": torch.full((256,), value)}, "meta": {"iter": 1}}, path)
    return path


def cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_damaged_and_refused_files_are_told_apart(tmp_path: Path) -> None:
    good = save(tmp_path / "iter_2.pth")
    assert load_checkpoint_file(good)["meta"]["iter"] == 1 and checkpoint_is_intact(good)
    damaged = cut(save(tmp_path / "iter_4.pth"))
    assert not checkpoint_is_intact(damaged)
    with pytest.raises(CorruptCheckpointError, match=r"iter_4\.pth: damaged or incomplete") as info:
        load_checkpoint_file(damaged)
    assert "weights_only" not in str(info.value)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match=r"notes\.pth: damaged") as info:
        load_checkpoint_file(text)
    assert "weights_only" not in str(info.value)
    refused = tmp_path / "foreign.pth"
    torch.save({"state_dict": collections.OrderedDict(), "extra": NotAllowed()}, refused)
    with pytest.raises(RefusedCheckpointError, match=r"foreign\.pth.*allow-list.*NotAllowed") as info:
        load_checkpoint_file(refused)
    assert "weights_only" not in str(info.value)
    assert isinstance(info.value, RuntimeError)  # callers catching RuntimeError still do


def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint(tmp_path: Path) -> None:
    save(tmp_path / "iter_2.pth", 2.0)
    newest = cut(save(tmp_path / "iter_4.pth", 4.0))
    (tmp_path / POINTER_NAME).write_text(str(newest))
    assert find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_2.pth")
    (tmp_path / POINTER_NAME).unlink()
    assert find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_2.pth")
    cut(tmp_path / "iter_2.pth")
    assert find_resumable_checkpoint(tmp_path) is None  # nothing intact: a fresh start


def test_stale_partial_files_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    stale = save(tmp_path / f".iter_6.pth.partial-{dead_pid}")
    alive = save(tmp_path / f".iter_8.pth.partial-{os.getppid()}")  # a running process's save
    kept = save(tmp_path / "iter_2.pth")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and alive.exists() and kept.exists()
