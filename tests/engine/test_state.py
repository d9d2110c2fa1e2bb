"""Atomic writes, random-state round trip, message-hub encoding and latest-checkpoint discovery."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from projects.sa2va.checkpoint.safe_load import load_checkpoint_file, mmengine_safe_globals
from projects.sa2va.engine import state as st


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "iter_2.pth"
    st.atomic_write_bytes(target, b"old")

    class Killed(BaseException):
        pass

    real_fdopen = os.fdopen

    def half_then_die(fd, mode):
        f = real_fdopen(fd, mode)
        orig_write = f.write

        def write(data):
            orig_write(data[: len(data) // 2])
            raise Killed

        f.write = write
        return f

    monkeypatch.setattr(st.os, "fdopen", half_then_die)
    with pytest.raises(Killed):
        st.atomic_write_bytes(target, b"new content " * 100)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth"], "temporary file left behind"


def test_find_resumable_checkpoint_tolerates_cut_pointer_and_partial_files(tmp_path):
    assert st.find_resumable_checkpoint(tmp_path) is None
    for n in (2, 10):
        torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / f"iter_{n}.pth")  # intact files
    (tmp_path / ".iter_12.pth.partial-123").write_bytes(b"half")  # a save killed mid-write
    (tmp_path / "last_checkpoint").write_text("")  # a pointer cut by a kill
    assert st.find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_10.pth")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))
    assert st.find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_2.pth")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_99.pth"))  # stale pointer
    assert st.find_resumable_checkpoint(tmp_path) == str(tmp_path / "iter_10.pth")


def test_a_copied_work_dir_resumes_from_its_own_files(tmp_path):
    """The pointer of a copied work dir names the original folder's file: never resume from there."""
    original, copy = tmp_path / "run", tmp_path / "run_copy"
    for d in (original, copy):
        d.mkdir()
        for n in (2, 4):
            torch.save({"state_dict": {"w": torch.full((2,), float(n))}}, d / f"iter_{n}.pth")
    (copy / "last_checkpoint").write_text(str(original / "iter_2.pth"))
    assert st.find_resumable_checkpoint(copy) == str(copy / "iter_2.pth")
    (copy / "last_checkpoint").write_text(str(original / "iter_6.pth"))  # not in the copy: newest here
    assert st.find_resumable_checkpoint(copy) == str(copy / "iter_4.pth")


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = st.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.save({"meta": {"rng_states": [saved]}}, tmp_path / "c.pth")
    loaded = load_checkpoint_file(tmp_path / "c.pth")["meta"]["rng_states"][0]
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    st.restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_message_hub_encoding_loads_with_weights_only():
    hb = HistoryBuffer([1.0, 2.0], [1, 1])
    encoded = st.encode_message_hub({"log_scalars": {"train/loss": hb}, "runtime_info": {"iter": 3}})
    buf = io.BytesIO()
    torch.save(encoded, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        loaded = torch.load(buf, weights_only=True)
    back = st.decode_message_hub(loaded)["log_scalars"]["train/loss"]
    assert isinstance(back, HistoryBuffer) and back.mean() == 1.5 and back.current() == 2.0
