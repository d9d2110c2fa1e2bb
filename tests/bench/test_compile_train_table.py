"""bench/gpu/compile_train_table.py (and compile_train_run.sh's eager path) on real and hand-written runs.

The real run: ``tools/train.py`` on the tiny demo config, CPU, 5 iterations, eager, with the run script's
options (every iteration logged unsmoothed, feature cache, no checkpoint or validation; ~10 s). Its table row
is checked against two sources the table does not read: mmengine's text log line per iteration (``time`` to 4
decimals) and the project's loss records (``train_losses.jsonl``). The hand-written scalars file and log test
the warm-up / compile-iteration / window logic with exact values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu.compile_train_table import (
    Row,
    compile_iterations,
    main,
    markdown_table,
    read_scalars,
    run_row,
    summarize,
)
from tests.tiny import ROOT

CONFIG = "projects/sa2va/configs/sa2va_tiny_demo.py"
ITERS = 5
# the options bench/gpu/compile_train_run.sh passes (batch 2 = the tiny config's)
OPTIONS = [
    "train_cfg.max_epochs=None",
    f"train_cfg.max_iters={ITERS}",
    "train_dataloader.drop_last=True",
    "optim_wrapper.accumulative_counts=1",
    "model.feature_cache.mode=memory",
    "default_hooks.logger.interval=1",
    "log_processor.window_size=1",
    "default_hooks.checkpoint=None",
    "val_cfg=None",
    "val_dataloader=None",
    "val_evaluator=None",
]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("compile_train") / "tiny_eager"
    cmd = [sys.executable, "tools/train.py", CONFIG, "--work-dir", str(work), "--cfg-options", *OPTIONS]
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return work


def _log_times(work: Path) -> dict[int, float]:
    (log,) = work.glob("*/*.log")
    found = re.findall(r"Iter\(train\) \[\s*(\d+)/\d+\].* time: ([0-9.]+) ", log.read_text())
    return {int(i): float(t) for i, t in found}


def test_real_tiny_run_row_matches_the_text_log_and_the_loss_records(tiny_run) -> None:
    from projects.sa2va.engine.hooks import read_loss_records

    row = run_row(tiny_run, model="tiny", compiled="no", batch=2, warmup=2)
    assert row.iters == ITERS
    assert row.window == [3, 4, 5]
    times = _log_times(tiny_run)
    assert sorted(times) == list(range(1, ITERS + 1))
    assert row.s_per_iter == pytest.approx(sum(times[i] for i in (3, 4, 5)) / 3, abs=1e-4)
    assert row.first_iter_s == pytest.approx(times[1], abs=1e-4)
    assert row.samples_per_s == pytest.approx(2 / row.s_per_iter)
    assert 0 <= row.data_s_per_iter < row.s_per_iter
    losses = read_loss_records(tiny_run / "train_losses.jsonl")
    assert row.first_loss == pytest.approx(float(losses[1]["loss"]), rel=1e-6)
    assert row.last_loss == pytest.approx(float(losses[ITERS]["loss"]), rel=1e-6)
    # eager on the CPU: no graph, no compile iteration, no CUDA memory field
    assert (row.graphs, row.compile_iters, row.peak_mib) == (None, [], None)
    table = markdown_table([row])
    assert "| tiny | no | 2 | 5 | 3-5 (3) |" in table and "| n/a |" in table


def test_real_scalars_records_are_the_iterations_in_order(tiny_run) -> None:
    (scalars,) = tiny_run.glob("*/vis_data/scalars.json")
    recs = read_scalars(scalars)
    assert [r["iter"] for r in recs] == list(range(1, ITERS + 1))
    assert all(
        {"time", "data_time", "loss", "loss_lm", "loss_mask", "loss_dice", "lr"} <= r.keys() for r in recs
    )


# --- hand-written run ---------------------------------------------------------------------------------------
TIMES = [
    20.0,
    9.0,
    1.0,
    1.2,
    1.0,
    1.1,
    7.0,
    0.9,
    1.0,
    5.0,
]  # iteration 7 recompiled; 10 is slow, not compiled
MEMORY = [900, 1200, 1000, 1000, 1000, 1000, 1100, 1000, 1000, 1000]


def _write_run(work: Path, graph_lines_before: dict[int, int], scalars_extra: str = "") -> None:
    stamp = work / "20261207_010000"
    (stamp / "vis_data").mkdir(parents=True)
    lines = []
    for i, (t, m) in enumerate(zip(TIMES, MEMORY), 1):
        rec = {
            "lr": 4e-5,
            "data_time": 0.01 * i,
            "loss": 10.0 - i,
            "time": t,
            "memory": m,
            "iter": i,
            "step": i,
        }
        lines.append(json.dumps(rec))
    (stamp / "vis_data" / "scalars.json").write_text("\n".join(lines) + "\n" + scalars_extra)
    log = ["12/07 01:00:00 - mmengine - INFO - compile_llm: 24 decoder layers compiled in place (...)"]
    for i in range(1, len(TIMES) + 1):
        if i in graph_lines_before:
            n = graph_lines_before[i]
            log.append(f"12/07 - mmengine - INFO - compile_llm: {n} graph(s) compiled so far (the latest for "
                       f"LLM input [B, L] = [32, {380 + i}])")  # fmt: skip
        log.append(
            f"12/07 - mmengine - INFO - Iter(train) [{i:2d}/10]  lr: 4.0e-05  time: {TIMES[i - 1]:.4f}"
        )
    (stamp / "20261207_010000.log").write_text("\n".join(log) + "\n")


def test_window_excludes_warm_up_and_compile_iterations_and_names_slow_ones(tmp_path) -> None:
    _write_run(tmp_path, {1: 1, 2: 2, 7: 3})
    row = run_row(tmp_path, model="1b", compiled="yes", batch=32, warmup=2)
    assert row.compile_iters == [1, 2, 7]
    assert row.compile_iters_s == pytest.approx(36.0)
    assert row.graphs == 3
    assert row.window == [3, 4, 5, 6, 8, 9, 10]
    want = (1.0 + 1.2 + 1.0 + 1.1 + 0.9 + 1.0 + 5.0) / 7
    assert row.s_per_iter == pytest.approx(want)
    assert row.samples_per_s == pytest.approx(32 / want)
    assert row.data_s_per_iter == pytest.approx((0.03 + 0.04 + 0.05 + 0.06 + 0.08 + 0.09 + 0.10) / 7)
    assert row.peak_mib == 1200  # the largest per-interval peak, warm-up included
    assert (row.first_loss, row.last_loss, row.first_iter_s) == (9.0, 0.0, 20.0)
    assert row.note == "iterations [10] took over 3x the window median 1.000 s"
    # the last 3 timed iterations; a warm-up past the compile iterations
    assert run_row(tmp_path, model="1b", compiled="yes", batch=32, warmup=2, window=3).window == [8, 9, 10]
    assert run_row(tmp_path, model="1b", compiled="yes", batch=32, warmup=8).window == [9, 10]
    line = markdown_table([row]).splitlines()[2]
    assert line.startswith(
        "| 1b | yes | 32 | 10 | 7 of 3-10 | 1.6000 | 0.0643 | 20.00 | 1200 | 9.0000 | 0.0000 |"
    )
    assert "| 20.00 | 1, 2, 7 (36.0) | 3 | iterations [10]" in line


def test_compile_line_belongs_to_the_next_iteration_line() -> None:
    log = "compile_llm: 1 graph(s) compiled so far\nfoo\nIter(train) [ 4/40]  time: 1\nIter(train) [ 5/40]\n"
    assert compile_iterations(log) == ([4], 1, False)
    assert compile_iterations("Iter(train) [1/2]\n") == ([], None, False)
    warned = log + "compile_llm: 8 graphs reached torch._dynamo.config.recompile_limit=8: ...\n"
    assert compile_iterations(warned)[2] is True
    with pytest.raises(ValueError, match=r"'2 graph\(s\) compiled so far' line has no 'Iter\(train\)' line"):
        compile_iterations(log + "compile_llm: 2 graph(s) compiled so far\n")
    # only the mask decoder compiled: its lines carry the compile_decoder prefix
    decoder_only = "compile_decoder: 1 graph(s) compiled so far\nIter(train) [ 1/8]\nIter(train) [ 2/8]\n"
    decoder_only += "compile_decoder: 2 graph(s) compiled so far\nIter(train) [ 3/8]\n"
    assert compile_iterations(decoder_only) == ([1, 3], 2, False)


def test_bad_inputs_are_refused_naming_the_file(tmp_path) -> None:
    _write_run(tmp_path / "a", {}, scalars_extra="{not json\n")
    with pytest.raises(ValueError, match=r"scalars\.json:11: not valid JSON"):
        run_row(tmp_path / "a", model="1b", compiled="no", batch=32, warmup=2)
    gaps = tmp_path / "gaps.json"
    gaps.write_text("".join(json.dumps({"iter": i, "time": 1.0, "loss": 1.0}) + "\n" for i in (5, 10)))
    with pytest.raises(ValueError, match=r"gaps\.json: logged iterations \[5, 10\] are not 1, 2, \.\.\., 2"):
        read_scalars(gaps)
    empty = tmp_path / "val_only.json"
    empty.write_text(json.dumps({"val/dice": 0.5, "step": 3}) + "\n")
    with pytest.raises(ValueError, match=r"val_only\.json: no training record"):
        read_scalars(empty)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no \*/vis_data/scalars\.json"):
        run_row(tmp_path / "nowhere", model="1b", compiled="no", batch=32, warmup=2)
    recs = [{"iter": i, "time": 1.0, "loss": 1.0} for i in (1, 2, 3)]
    with pytest.raises(ValueError, match=r"run7: 3 iterations logged, none left to time after warm-up 2"):
        summarize(recs, model="1b", compiled="yes", batch=32, warmup=2, compile_iters=[3], source="run7")
    with pytest.raises(ValueError, match="window must be >= 1"):
        summarize(recs, model="1b", compiled="no", batch=32, warmup=0, window=0)


def test_cli_lists_skipped_and_failed_runs_and_writes_its_files(tmp_path, capsys) -> None:
    _write_run(tmp_path / "ok", {1: 1})
    md, js = tmp_path / "t.md", tmp_path / "rows.json"
    argv = ["--warmup", "1", "--run", "4b", "yes", "16", str(tmp_path / "ok"), "--run", "4b", "no", "16"]
    argv += [str(tmp_path / "missing"), "--skipped", "1b", "yes", "32", "past BUDGET_S=360 s"]
    assert main([*argv, "--out-md", str(md), "--out-json", str(js)]) == 1  # a run without a row fails
    out = capsys.readouterr().out
    assert md.read_text() == out
    rows = [Row(**r) for r in json.loads(js.read_text())]
    assert [(r.model, r.compiled, r.iters) for r in rows] == [
        ("4b", "yes", 10),
        ("4b", "no", None),
        ("1b", "yes", None),
    ]
    assert rows[1].note.startswith("no row: ") and "missing: no */vis_data/scalars.json" in rows[1].note
    assert rows[2].note == "skipped: past BUDGET_S=360 s"


# --- the run script, CPU smoke mode, without compiling ------------------------------------------------------
def _script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(ENV, SMOKE="1", PY=sys.executable, OUT=str(tmp_path / "out"), WD=str(tmp_path / "wd"), **env)
    cmd = ["bash", "bench/gpu/compile_train_run.sh"]
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)


def test_run_script_eager_smoke_writes_its_table_and_logs(tmp_path) -> None:
    res = _script(tmp_path, RUNS="eager", ITERS="3", WARMUP="1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "compile_train.md",
        "compile_train_rows.json",
        "gpu.txt",
        "tiny_eager.log",
    ]
    (row,) = json.loads((out / "compile_train_rows.json").read_text())
    assert (row["model"], row["compiled"], row["batch"], row["iters"], row["window"]) == (
        "tiny",
        "no",
        2,
        3,
        [2, 3],
    )
    assert (
        (out / "compile_train.md").read_text().splitlines()[2].startswith("| tiny | no | 2 | 3 | 2-3 (2) |")
    )
    assert "tools/train.py" in (out / "gpu.txt").read_text()


def test_run_script_lists_runs_past_the_budget_as_skipped(tmp_path) -> None:
    res = _script(tmp_path, BUDGET_S="-1", RUNS="eager compiled")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "compile_train_rows.json").read_text())
    assert [(r["compiled"], r["iters"]) for r in rows] == [("no", None), ("yes", None)]
    assert all(re.fullmatch(r"skipped: would start at \d+ s, past BUDGET_S=-1 s", r["note"]) for r in rows)
    assert not (tmp_path / "wd" / "tiny_eager").exists()
