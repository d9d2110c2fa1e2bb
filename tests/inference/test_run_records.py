"""projects/sa2va/run_records.py: settings check, record trust rules, atomic writes, progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mmengine.logging import MMLogger

from projects.sa2va.run_records import (
    RunRecords,
    SettingsMismatchError,
    check_settings,
    config_digest,
    path_digest,
    progress_bar,
    write_atomic,
)


@pytest.fixture
def warnings(caplog):
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


def _two_items(folder: Path) -> RunRecords:
    records = RunRecords(folder, "items", fresh=True)
    for key in ("a", "b"):
        digest = write_atomic(folder / f"{key}.bin", key.encode() * 10)
        records.append(key, f"in-{key}", {"value": key}, {f"{key}.bin": digest})
    return records


def test_intact_records_are_reused(tmp_path):
    records = _two_items(tmp_path)
    assert records.reusable({"a": "in-a", "b": "in-b", "c": "in-c"}) == {
        "a": {"value": "a"},
        "b": {"value": "b"},
    }
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "b.bin").unlink(), "b.bin is missing"),
        (lambda d: (d / "b.bin").write_bytes(b"other"), "differs from the recorded file"),
        (lambda d: _edit_line(d, 1, lambda e: e["record"].update(value="x")), "altered"),
        (lambda d: _edit_line(d, 1, lambda e: e.update(input="in-b2")), "altered"),
        (lambda d: _cut_last_line(d), "not a complete record"),
    ],
)
def test_damaged_records_are_recomputed_never_trusted(tmp_path, warnings, damage, reason):
    records = _two_items(tmp_path)
    damage(tmp_path)
    assert records.reusable({"a": "in-a", "b": "in-b"}) == {"a": {"value": "a"}}
    assert reason in warnings.text


def test_a_changed_input_is_recomputed(tmp_path, warnings):
    records = _two_items(tmp_path)
    assert records.reusable({"a": "in-a", "b": "new image bytes"}) == {"a": {"value": "a"}}
    assert "the input of 'b' changed since" in warnings.text


def test_fresh_run_forgets_earlier_records_and_ranks_append_to_their_own_file(tmp_path):
    _two_items(tmp_path)
    rank1 = RunRecords(tmp_path, "items", fresh=False, rank=1)
    rank1.append("c", "in-c", {"value": "c"}, {})
    assert rank1.path.name == "items.rank1.jsonl"
    both = RunRecords(tmp_path, "items", fresh=False)
    assert set(both.reusable({"a": "in-a", "c": "in-c"})) == {"a", "c"}
    fresh = RunRecords(tmp_path, "items", fresh=True)
    assert fresh.reusable({"a": "in-a", "c": "in-c"}) == {} and not list(tmp_path.glob("*.jsonl"))


def _edit_line(folder: Path, index: int, edit) -> None:
    path = folder / "items.jsonl"
    lines = path.read_text().splitlines()
    entry = json.loads(lines[index])
    edit(entry)
    lines[index] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")


def _cut_last_line(folder: Path) -> None:
    path = folder / "items.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])


def test_settings_are_stored_and_compared(tmp_path):
    path = tmp_path / "run_settings.json"
    check_settings(path, {"threshold": 0.5, "checkpoint": "abc"}, skip_existing=False, info={"x": 1})
    stored = json.loads(path.read_text())
    assert stored["settings"] == {"threshold": 0.5, "checkpoint": "abc"} and stored["info"] == {"x": 1}
    check_settings(path, {"checkpoint": "abc", "threshold": 0.5}, skip_existing=True)
    with pytest.raises(SettingsMismatchError) as err:
        check_settings(path, {"threshold": 0.4, "checkpoint": "abc", "tile": "on"}, skip_existing=True)
    assert "threshold: stored 0.5, now 0.4" in str(err.value)
    assert "tile: stored '<absent>', now 'on'" in str(err.value)
    assert json.loads(path.read_text())["settings"]["threshold"] == 0.5  # a refused run writes nothing
    path.write_text("{not json")
    with pytest.raises(SettingsMismatchError, match="cannot read the stored run settings"):
        check_settings(path, {"threshold": 0.5}, skip_existing=True)
    check_settings(path, {"threshold": 0.5}, skip_existing=False)  # a fresh run replaces it


def test_settings_missing_next_to_records_is_refused(tmp_path):
    _two_items(tmp_path)
    with pytest.raises(SettingsMismatchError, match="no settings file"):
        check_settings(tmp_path / "run_settings.json", {"a": 1}, skip_existing=True)
    check_settings(tmp_path / "other" / "run_settings.json", {"a": 1}, skip_existing=True)  # empty: fine


def test_digests_follow_contents_not_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "sub" / "w.safetensors").write_bytes(b"\x00" * 100)
    assert path_digest(a) == path_digest(b)
    (b / "sub" / "w.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    assert path_digest(a) != path_digest(b)
    cfg = {
        "model": {"type": dict, "x": 1},
        "val_dataloader": {"dataset": {"ann_file": "a.json", "max_tiles": 2}},
    }
    moved = {**cfg, "val_dataloader": {"dataset": {"ann_file": "b.json", "max_tiles": 2}}}
    retiled = {**cfg, "val_dataloader": {"dataset": {"ann_file": "a.json", "max_tiles": 3}}}
    assert config_digest(cfg) == config_digest(moved) != config_digest(retiled)


def test_progress_bar_shows_count_and_eta_on_stderr_without_spamming_logs(capsys):
    with progress_bar(200, desc="predict", initial=50) as bar:
        for _ in range(150):
            bar.update(1)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "200/200" in err
    assert err.count("\r") <= 3  # not a TTY: start and end, not one line per item
    with progress_bar(5, desc="quiet", enabled=False) as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""
