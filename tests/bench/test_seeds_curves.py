"""bench/gpu/seeds_curves.py: curves read from mmengine training logs, the PNG, the error naming the log."""

from __future__ import annotations

import pytest

from bench.gpu.seeds_curves import main, parse_log

LOG = """\
12/06 20:42:05 - mmengine - INFO - Iter(train) [  20/8000]  lr: 1.3e-04  loss: 7.2137  loss_lm: 5.7839  loss_mask: 0.5442  loss_dice: 0.4423  loss_cldice: 0.4433
12/06 20:42:17 - mmengine - INFO - TimeBudgetHook: max_iters 8000 -> 478
12/06 20:42:29 - mmengine - INFO - Iter(train) [ 60/478]  lr: 4.0e-04  loss: 2.7405  loss_lm: 1.5752  loss_mask: 0.4814  loss_dice: 0.3458  loss_cldice: 0.3381
12/06 20:44:22 - mmengine - INFO - Iter(val) [4/4]    val/dice: 0.6211  val/dice_best: 0.6601  val/best
12/06 20:44:22 - mmengine - INFO - The best checkpoint with 0.6601 val/dice_best at 250 iter is saved to best.pth.
12/06 20:45:00 - mmengine - INFO - Iter(train) [460/478]  lr: 1.0e-05  loss: 0.9  loss_lm: 0.4  loss_mask: 0.2  loss_dice: 0.2  loss_cldice: 0.1
12/06 20:46:39 - mmengine - INFO - Iter(val) [4/4]    val/dice: 0.6979  val/dice_best: 0.7072  val/best
"""  # noqa: E501


def test_parse_log_reads_the_mask_terms_and_the_validation_points():
    c = parse_log(LOG)
    assert [i for i, _ in c.train] == [20, 60, 460]
    assert c.train[0][1] == pytest.approx(0.5442 + 0.4423 + 0.4433)  # loss and loss_lm are not mask terms
    # the first validation takes the iteration its best-checkpoint line names; the last, the last train line
    assert c.val == [(250, 0.6601), (460, 0.7072)]


def test_a_log_without_mask_terms_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"seed7\.log: no 'Iter\(train\)' line"):
        parse_log("12/06 - mmengine - INFO - loaded 16 records\n", source="seed7.log")


def test_main_writes_the_png(tmp_path, capsys):
    for seed in (0, 1):
        (tmp_path / f"train_seed{seed}.log").write_text(LOG)
    out = tmp_path / "curves.png"
    argv = [f"--log={s}={tmp_path / f'train_seed{s}.log'}" for s in (0, 1)] + ["--out", str(out)]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "seed 1: 3 training points (last 460), held-out Dice 250: 0.6601, 460: 0.7072" in printed
