"""Issue 19: where each ``tools/train.py`` iteration spends its host time, model step and loop alike.

Runs ``tools/train.py`` (the real launcher, runner, loop and hooks) in this process with timers around the
parts of an iteration, and a sampler thread that records the main thread's Python stack while the loop is in
mmengine's ``data_time`` window (from ``IterTimerHook.after_train_iter`` to the next ``before_train_iter``):

* ``train_step``: the model's ``train_step`` (data preprocessing, forward, backward, optimiser). On CUDA the
  host only launches kernels here; the device may still be running when it returns.
* ``after:<Hook>`` / ``before:<Hook>``: each hook's ``after_train_iter`` / ``before_train_iter``.
  ``after:RuntimeInfoHook`` reads the losses (``Tensor.item()``), so on CUDA the host waits there for the
  device to finish the step.
* ``next(batch)``: ``next()`` of the data loader's iterator (the batch of the next iteration), of which
  ``  wait for batch`` is the wait for a worker's batch (``_get_data``).
* ``model.train()``: the loop sets training mode on every module each iteration.
* ``other``: the rest of the iteration's wall time.

An iteration's wall time runs from one ``before_train_iter`` call to the next, so it holds its own step and
the fetch of the next iteration's batch; the last iteration of the run has no end and is not counted.

    python bench/gpu/loop_parts.py --warmup 10 --out-json parts.json -- CONFIG --work-dir W --cfg-options ...

Everything after ``--`` is ``tools/train.py``'s command line. Prints the table (mean ms per iteration over the
iterations after ``--warmup``, and the share of the iteration) and the main thread's most frequent stacks in
the ``data_time`` window; ``--out-json`` keeps both.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: innermost frames kept per sampled stack
STACK_DEPTH = 10


class LoopTimers:
    """Per-iteration part timings of one training run, and the stacks sampled in the ``data_time`` window.

    ``iterations[k]`` maps part name -> seconds for iteration ``k`` (0-based, in run order), with ``"wall"``
    the iteration's wall time.
    """

    def __init__(self, sample_s: float = 0.002) -> None:
        self.iterations: list[dict[str, float]] = []
        self._current: dict[str, float] | None = None
        self._start: float | None = None
        self.in_window = False
        self.window_stacks: Counter[str] = Counter()
        self.window_samples = 0
        self._sample_s = sample_s
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, part: str, seconds: float) -> None:
        if self._current is not None:
            self._current[part] = self._current.get(part, 0.0) + seconds

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - t)

        return wrapper

    def iteration_starts(self) -> None:
        now = time.perf_counter()
        if self._current is not None and self._start is not None:
            self._current["wall"] = now - self._start
            self.iterations.append(self._current)
        self._current, self._start = {}, now

    # the sampler thread
    def start_sampler(self) -> None:
        self._thread = threading.Thread(target=self._sample, name="loop-parts-sampler", daemon=True)
        self._thread.start()

    def stop_sampler(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _sample(self) -> None:
        while not self._stop.wait(self._sample_s):
            if not self.in_window:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            summary = traceback.extract_stack(frame)[-STACK_DEPTH:]
            key = " <- ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(summary))
            self.window_stacks[key] += 1
            self.window_samples += 1

    def table(self, warmup: int) -> list[dict[str, Any]]:
        """Rows ``{"part", "mean_ms", "share"}`` over the iterations after the first ``warmup``, largest
        first, with ``other`` (wall less the parts, ``  wait for batch`` not counted twice) and ``wall``
        last."""
        its = self.iterations[warmup:]
        if not its:
            raise ValueError(f"no iteration after the first {warmup} ({len(self.iterations)} timed)")
        sums: dict[str, float] = defaultdict(float)
        for it in its:
            for k, v in it.items():
                sums[k] += v
            sums["other"] += it["wall"] - sum(v for k, v in it.items() if k not in ("wall", WAIT))
        wall = sums.pop("wall") / len(its)
        rows = [
            {"part": k, "mean_ms": 1000 * v / len(its), "share": (v / len(its)) / wall if wall else 0.0}
            for k, v in sums.items()
        ]
        rows.sort(key=lambda r: -r["mean_ms"])
        rows.append({"part": "wall", "mean_ms": 1000 * wall, "share": 1.0})
        return rows


WAIT = "  wait for batch"


def install(timers: LoopTimers) -> None:
    """Patch mmengine's ``Runner.call_hook`` and the data loader iterator to feed ``timers``."""
    import torch.utils.data.dataloader as tdl
    from mmengine.runner import Runner

    def call_hook(self: Any, fn_name: str, **kwargs: Any) -> None:
        if fn_name == "before_train":
            model = self.model
            model.train_step = timers.timed("train_step", model.train_step)
            model.train = timers.timed("model.train()", model.train)
        if fn_name == "before_train_iter":
            timers.in_window = False
            timers.iteration_starts()
        tag = {"before_train_iter": "before:", "after_train_iter": "after:"}.get(fn_name)
        for hook in self._hooks:
            if not hasattr(hook, fn_name):
                continue
            t = time.perf_counter()
            getattr(hook, fn_name)(self, **kwargs)
            if tag is not None:
                timers.add(tag + type(hook).__name__, time.perf_counter() - t)
            if fn_name == "after_train_iter" and type(hook).__name__ == "IterTimerHook":
                timers.in_window = True  # mmengine's data_time starts here
        if fn_name == "after_train":
            timers.in_window = False

    Runner.call_hook = call_hook
    tdl._BaseDataLoaderIter.__next__ = timers.timed("next(batch)", tdl._BaseDataLoaderIter.__next__)
    mp_iter = tdl._MultiProcessingDataLoaderIter
    mp_iter._get_data = timers.timed(WAIT, mp_iter._get_data)


def format_table(rows: Sequence[dict[str, Any]], n: int, warmup: int) -> str:
    lines = [
        f"Host time per tools/train.py iteration (mean of {n} iterations after the first {warmup})",
        "",
        "| part | ms | share of the iteration |",
        "|---|---|---|",
    ]
    lines += [f"| {r['part']} | {r['mean_ms']:.2f} | {100 * r['share']:.1f} % |" for r in rows]
    return "\n".join(lines)


def format_stacks(timers: LoopTimers, top: int) -> str:
    n = timers.window_samples
    lines = [f"Main thread in the data_time window: {n} samples, most frequent stacks (innermost first)"]
    for key, c in timers.window_stacks.most_common(top):
        lines.append(f"  {c:6d} ({100 * c / n:5.1f} %)  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("loop_parts.py: put tools/train.py's command line after --")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=10, help="iterations left out of the means")
    p.add_argument("--sample-ms", type=float, default=2.0, help="stack sampling interval in the window")
    p.add_argument("--top", type=int, default=8, help="stacks printed")
    p.add_argument("--out-json", type=Path)
    args = p.parse_args(argv[:cut])
    timers = LoopTimers(sample_s=args.sample_ms / 1000)
    install(timers)
    timers.start_sampler()
    from tools.train import main as train_main

    try:
        train_main(argv[cut + 1 :])
    finally:
        timers.stop_sampler()
    n = len(timers.iterations) - args.warmup
    rows = timers.table(args.warmup)
    print(format_table(rows, n, args.warmup))
    print(format_stacks(timers, args.top))
    if args.out_json is not None:
        args.out_json.write_text(
            json.dumps(
                {
                    "warmup": args.warmup,
                    "iterations": timers.iterations,
                    "rows": rows,
                    "window_samples": timers.window_samples,
                    "window_stacks": timers.window_stacks.most_common(50),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
