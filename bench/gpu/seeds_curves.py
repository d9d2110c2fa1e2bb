"""Learning curves of the CHASE_DB1 seeds run (bench/gpu/chase_learning_seeds.sh) from its training logs.

Reads each seed's mmengine training log (``Iter(train) [i/N] ... loss_mask: ... loss_dice: ...`` lines and the
``Iter(val)`` lines with ``val/dice_best``, the held-out patients' Dice at their best threshold) and draws two
panels: the mask losses (BCE + Dice + clDice terms, as logged every ``logger.interval`` iterations) and the
held-out validation Dice against the iteration, one line per seed. Writes a PNG and prints the points.

    python bench/gpu/seeds_curves.py --log 0=train_seed0.log --log 1=train_seed1.log --out curves.png
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

_TRAIN = re.compile(r"Iter\(train\) \[\s*(\d+)/\s*\d+\]")
_TERM = re.compile(r"\b(loss_mask|loss_dice|loss_cldice): ([0-9.eE+-]+)")
_VAL = re.compile(r"Iter\(val\) .*?val/dice_best: ([0-9.]+)")
_VAL_AT = re.compile(r"val/dice_best at (\d+) iter")


@dataclass
class Curves:
    """``train``: (iteration, summed mask-loss terms); ``val``: (iteration, held-out Dice at its best
    threshold)."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


def parse_log(text: str, source: str = "log") -> Curves:
    """The curves in one training log. A validation line takes the iteration of the last training line
    before it, or the iteration the best-checkpoint line names when that comes right after it.

    Raises:
        ValueError: naming ``source`` when the log has no training line with mask-loss terms.
    """
    curves, last_iter, pending = Curves(), 0, None
    for line in text.splitlines():
        if m := _TRAIN.search(line):
            last_iter = int(m.group(1))
            terms = dict(_TERM.findall(line))
            if terms:
                curves.train.append((last_iter, sum(float(v) for v in terms.values())))
        elif m := _VAL.search(line):
            if pending is not None:
                curves.val.append(pending)
            pending = (last_iter, float(m.group(1)))
        elif pending is not None and (m := _VAL_AT.search(line)):
            pending = (int(m.group(1)), pending[1])
    if pending is not None:
        curves.val.append(pending)
    if not curves.train:
        raise ValueError(f"{source}: no 'Iter(train)' line with loss_mask / loss_dice / loss_cldice terms")
    return curves


def plot(curves: dict[str, Curves], out: Path) -> None:
    """Two panels (mask losses, held-out Dice) with one line per seed, written to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for seed, c in curves.items():
        ax_loss.plot(*zip(*c.train, strict=True), label=f"seed {seed}")
        if c.val:
            ax_val.plot(*zip(*c.val, strict=True), marker="o", label=f"seed {seed}")
    ax_loss.set(xlabel="iteration", ylabel="mask losses (BCE + Dice + clDice terms)", title="training")
    ax_val.set(xlabel="iteration", ylabel="Dice at the best threshold", title="held-out patients 09, 10")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", action="append", required=True, help="SEED=PATH of a training log (repeat)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    curves = {}
    for item in args.log:
        seed, sep, path = item.partition("=")
        if not sep or not path:
            p.error(f"--log {item!r}: expected SEED=PATH")
        curves[seed] = parse_log(Path(path).read_text(errors="replace"), source=path)
    for seed, c in curves.items():
        val = ", ".join(f"{i}: {d:.4f}" for i, d in c.val) or "none"
        print(f"seed {seed}: {len(c.train)} training points (last {c.train[-1][0]}), held-out Dice {val}")
    plot(curves, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
