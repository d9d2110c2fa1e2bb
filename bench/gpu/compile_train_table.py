"""The table of ``bench/gpu/compile_train_run.sh``: eager vs compiled (``model.compile_llm`` /
``model.compile_decoder``) in ``tools/train.py``.

Reads, per run, the scalars file mmengine's ``LocalVisBackend`` writes under the work dir
(``<work_dir>/<timestamp>/vis_data/scalars.json``, one JSON object per logged training iteration) and, when
present, the text log next to it (``<work_dir>/<timestamp>/<timestamp>.log``). The runs must log every
iteration unsmoothed (``--cfg-options default_hooks.logger.interval=1 log_processor.window_size=1``, as the
run script does): then a record's ``time`` is that one iteration's wall time (mmengine ``IterTimerHook``: from
the end of the previous iteration to the end of this one, data loading and the previous iteration's logging
included), ``data_time`` its wait for the data loader, the losses that iteration's, and ``memory`` (CUDA
only) ``torch.cuda.max_memory_allocated`` in MiB (integer division by 2**20) since the previous logged
iteration (mmengine's ``get_max_cuda_memory`` resets the peak after each read, so the run's peak is the
records' maximum).

Compile iterations are read from the text log: ``Sa2VAModel(compile_llm=...)`` / ``(compile_decoder=...)``
logs ``compile_llm: N graph(s) compiled so far`` (``compile_decoder: ...`` when only the mask decoder is
compiled) at the end of the forward of the iteration that compiled a new graph, before mmengine's
``Iter(train) [i/N]`` line of that iteration, so each such line belongs to the next ``Iter(train)`` line.

The timed window: the iterations after the first ``warmup`` ones, less the compile iterations, the last
``window`` of them (all of them when ``window`` is ``None``); ``s/iter`` is their mean ``time`` and
``samples/s = batch / s/iter`` (exact when every batch is full: the run script sets
``train_dataloader.drop_last=True``). Iterations of the window slower than ``SLOW_FACTOR`` times its median
are named in the note, not dropped.

    python bench/gpu/compile_train_table.py --warmup 10 --run 1b no 32 WORK_DIR --run 1b yes 32 WORK_DIR2 \\
        --skipped 4b yes 16 "past BUDGET_S=360 s" --out-md table.md --out-json rows.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projects.sa2va.evaluation.plots import load_scalars  # noqa: E402

#: a window iteration slower than this many times the window's median is named in the row's note
SLOW_FACTOR = 3.0

_ITER = re.compile(r"Iter\(train\) \[\s*(\d+)/\s*\d+\]")
_GRAPHS = re.compile(r"compile_(?:llm|decoder): (\d+) graph\(s\) compiled so far")
_LIMIT = "reached torch._dynamo.config.recompile_limit"


@dataclass
class Row:
    """One run of the table. Numbers are ``None`` for a run that did not train (``note`` says why).

    Attributes:
        model: the model label (``1b``, ``4b``, ``tiny``).
        compiled: ``'yes'`` / ``'no'`` (the run's compile options, ``COMPILE_OPTS`` of the run script).
        batch: samples per iteration (``train_dataloader.batch_size``).
        iters: training iterations logged.
        window: the timed iterations (1-based).
        s_per_iter: mean wall time of an iteration of the window, seconds.
        data_s_per_iter: mean ``data_time`` of the window, seconds.
        samples_per_s: ``batch / s_per_iter``.
        peak_mib: the largest ``memory`` of the run (MiB of ``max_memory_allocated``); ``None`` off CUDA.
        first_loss, last_loss: ``loss`` of the first and the last iteration.
        first_iter_s: wall time of iteration 1 (compiled: includes compiling the first graphs).
        compile_iters: iterations during which a new graph was compiled (from the text log).
        compile_iters_s: their summed wall time, seconds.
        graphs: graphs compiled in the run (the last ``N graph(s) compiled so far`` line); ``None`` when none.
        note: skipped / failed / slow iterations / recompile limit.
    """

    model: str
    compiled: str
    batch: int
    iters: int | None = None
    window: list[int] = field(default_factory=list)
    s_per_iter: float | None = None
    data_s_per_iter: float | None = None
    samples_per_s: float | None = None
    peak_mib: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    first_iter_s: float | None = None
    compile_iters: list[int] = field(default_factory=list)
    compile_iters_s: float | None = None
    graphs: int | None = None
    note: str = ""


def read_scalars(path: str | Path) -> list[dict]:
    """The training records of a ``scalars.json``: those with ``iter``, ``time`` and ``loss``, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object (naming the file and line), no training record, or
            iterations that are not 1, 2, ... n (the run did not log every iteration).
    """
    path = Path(path)
    records = [rec for rec in load_scalars(path) if {"iter", "time", "loss"} <= rec.keys()]
    if not records:
        raise ValueError(f"{path}: no training record (a line with 'iter', 'time' and 'loss')")
    iters = [int(r["iter"]) for r in records]
    if iters != list(range(1, len(iters) + 1)):
        shown = iters[:8] + (["..."] if len(iters) > 8 else [])
        raise ValueError(
            f"{path}: logged iterations {shown} are not 1, 2, ..., {len(iters)}: run with --cfg-options "
            "default_hooks.logger.interval=1 log_processor.window_size=1"
        )
    return records


def compile_iterations(log_text: str) -> tuple[list[int], int | None, bool]:
    """The iterations that compiled a graph, the graphs compiled in all, and whether the recompile-limit
    warning was logged, from the text log of a run.

    A ``compile_llm`` / ``compile_decoder: N graph(s) compiled so far`` line belongs to the first
    ``Iter(train) [i/N]`` line after
    it (an iteration's log line comes after its forward).

    Raises:
        ValueError: a graph line after the last ``Iter(train)`` line (a log of a run that did not log every
            iteration or stopped mid-iteration).
    """
    iters: list[int] = []
    graphs: int | None = None
    pending = False
    for line in log_text.splitlines():
        g = _GRAPHS.search(line)
        if g:
            graphs = int(g.group(1))
            pending = True
            continue
        m = _ITER.search(line)
        if m and pending:
            iters.append(int(m.group(1)))
            pending = False
    if pending:
        raise ValueError(f"a '{graphs} graph(s) compiled so far' line has no 'Iter(train)' line after it")
    return iters, graphs, _LIMIT in log_text


def summarize(
    records: Sequence[dict],
    *,
    model: str,
    compiled: str,
    batch: int,
    warmup: int,
    window: int | None = None,
    compile_iters: Sequence[int] = (),
    source: str = "scalars",
) -> Row:
    """A :class:`Row` from a run's training records (:func:`read_scalars`).

    Args:
        warmup: the first ``warmup`` iterations are not timed (feature-cache fill, first graphs, allocator).
        window: time the last ``window`` iterations left after the warm-up and the compile iterations;
            ``None``: all of them.
        compile_iters: iterations that compiled a graph (:func:`compile_iterations`); never timed.
        source: names the run in errors.

    Raises:
        ValueError: a bad ``warmup`` / ``window`` / ``batch``, or no iteration left to time.
    """
    if warmup < 0:
        raise ValueError(f"{source}: warmup must be >= 0, got {warmup}")
    if window is not None and window < 1:
        raise ValueError(f"{source}: window must be >= 1 or None, got {window}")
    if batch < 1:
        raise ValueError(f"{source}: batch must be >= 1, got {batch}")
    by_iter = {int(r["iter"]): r for r in records}
    skip = set(compile_iters)
    timed = [i for i in sorted(by_iter) if i > warmup and i not in skip]
    if window is not None:
        timed = timed[-window:]
    if not timed:
        raise ValueError(
            f"{source}: {len(records)} iterations logged, none left to time after warm-up {warmup} and "
            f"compile iterations {sorted(skip)}: run more iterations"
        )
    times = [float(by_iter[i]["time"]) for i in timed]
    s_per_iter = statistics.fmean(times)
    median = statistics.median(times)
    slow = [i for i, t in zip(timed, times) if t > SLOW_FACTOR * median]
    mems = [int(r["memory"]) for r in records if "memory" in r]
    row = Row(
        model=model,
        compiled=compiled,
        batch=batch,
        iters=len(records),
        window=timed,
        s_per_iter=s_per_iter,
        data_s_per_iter=statistics.fmean(float(by_iter[i].get("data_time", math.nan)) for i in timed),
        samples_per_s=batch / s_per_iter,
        peak_mib=max(mems) if mems else None,
        first_loss=float(records[0]["loss"]),
        last_loss=float(records[-1]["loss"]),
        first_iter_s=float(by_iter[1]["time"]) if 1 in by_iter else None,
        compile_iters=sorted(i for i in skip if i in by_iter),
        compile_iters_s=sum(float(by_iter[i]["time"]) for i in skip if i in by_iter),
    )
    if slow:
        row.note = f"iterations {slow} took over {SLOW_FACTOR:g}x the window median {median:.3f} s"
    return row


def find_run_files(work_dir: str | Path) -> tuple[Path, Path | None]:
    """The newest ``<work_dir>/<timestamp>/vis_data/scalars.json`` and the text log of the same timestamp
    (``None`` when absent).

    Raises:
        FileNotFoundError: no scalars file under ``work_dir``.
    """
    found = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    if not found:
        raise FileNotFoundError(f"{work_dir}: no */vis_data/scalars.json (did the run log an iteration?)")
    scalars = found[-1]
    stamp = scalars.parent.parent
    log = stamp / f"{stamp.name}.log"
    return scalars, log if log.is_file() else None


def run_row(
    work_dir: str | Path, *, model: str, compiled: str, batch: int, warmup: int, window: int | None = None
) -> Row:
    """The row of one ``tools/train.py`` run from its work dir (:func:`find_run_files`)."""
    scalars, log = find_run_files(work_dir)
    compile_iters: list[int] = []
    graphs, limit = None, False
    if log is not None:
        try:
            compile_iters, graphs, limit = compile_iterations(log.read_text(errors="replace"))
        except ValueError as e:
            raise ValueError(f"{log}: {e}") from e
    row = summarize(
        read_scalars(scalars),
        model=model,
        compiled=compiled,
        batch=batch,
        warmup=warmup,
        window=window,
        compile_iters=compile_iters,
        source=str(scalars),
    )
    row.graphs = graphs
    if log is None:
        row.note = "; ".join(
            filter(None, [row.note, "no text log: compile iterations unknown, not excluded"])
        )
    if limit:
        row.note = "; ".join(filter(None, [row.note, "recompile_limit reached: later shapes ran eager"]))
    return row


def _f(x: float | int | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def _span(iters: Sequence[int]) -> str:
    if not iters:
        return ""
    if list(iters) == list(range(iters[0], iters[-1] + 1)):
        return f"{iters[0]}-{iters[-1]} ({len(iters)})"
    return f"{len(iters)} of {iters[0]}-{iters[-1]}"


HEADER = (
    "| model | compiled | batch | iters | timed iters | s/iter | data s/iter | samples/s | peak MiB "
    "| first loss | last loss | 1st iter s | compile iters (s) | graphs | note |"
)


def markdown_table(rows: Sequence[Row]) -> str:
    """A markdown table, one line per row (empty cells for numbers a skipped or failed run lacks)."""
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in rows:
        comp = ""
        if r.compile_iters:
            comp = f"{', '.join(map(str, r.compile_iters))} ({r.compile_iters_s:.1f})"
        cells = [
            r.model,
            r.compiled,
            str(r.batch),
            _f(r.iters, "d"),
            _span(r.window),
            _f(r.s_per_iter, ".4f"),
            _f(r.data_s_per_iter, ".4f"),
            _f(r.samples_per_s, ".2f"),
            "n/a" if r.iters is not None and r.peak_mib is None else _f(r.peak_mib, "d"),
            _f(r.first_loss, ".4f"),
            _f(r.last_loss, ".4f"),
            _f(r.first_iter_s, ".2f"),
            comp,
            _f(r.graphs, "d"),
            r.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run", nargs=4, action="append", default=[], metavar=("MODEL", "COMPILED", "BATCH", "DIR")
    )
    p.add_argument(
        "--skipped", nargs=4, action="append", default=[], metavar=("MODEL", "COMPILED", "BATCH", "REASON")
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed first iterations (default 10)")
    p.add_argument("--window", type=int, help="time the last WINDOW iterations left (default: all)")
    p.add_argument("--out-md", help="also write the table here")
    p.add_argument("--out-json", help="also write the rows here (a JSON list)")
    args = p.parse_args(argv)
    rows, status = [], 0
    for model, compiled, batch, where in args.run:
        try:
            rows.append(
                run_row(
                    where,
                    model=model,
                    compiled=compiled,
                    batch=int(batch),
                    warmup=args.warmup,
                    window=args.window,
                )
            )
        except (FileNotFoundError, ValueError) as e:
            rows.append(Row(model, compiled, int(batch), note=f"no row: {e}"))
            status = 1
    rows += [Row(m, c, int(b), note=f"skipped: {why}") for m, c, b, why in args.skipped]
    table = markdown_table(rows)
    print(table)
    if args.out_md:
        Path(args.out_md).write_text(table + "\n")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
