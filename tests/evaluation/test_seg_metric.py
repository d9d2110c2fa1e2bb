"""SegMetric: exact values on small hand-made cases, the threshold sweep, and the distributed gather/dedup."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from projects.sa2va.evaluation.metrics import dice
from projects.sa2va.evaluation.seg_metric import SegMetric, merge_sample_states, query_key


def sample(image_id: str, probs, gt, texts=None) -> dict:
    probs = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    gt = torch.as_tensor(np.asarray(gt, dtype=bool))
    return {"image_id": image_id, "texts": texts or ["vessel"] * probs.shape[0], "probs": probs, "gt": gt}


# 2x3 image: gt has 3 foreground pixels.
GT = [[[1, 1, 0], [1, 0, 0]]]
# Values exact in float32 (the model returns float32; the grid is float64).
PROBS = [[[0.875, 0.375, 0.625], [0.25, 0.125, 0.0]]]


def test_hand_computed_case_at_05_and_best():
    m = SegMetric(prefix=None)
    m.process(None, [sample("a.jpg", PROBS, GT)])
    out = m.compute_metrics(m.results)
    # t=0.5: pred {0.875, 0.625} -> TP 1, FP 1, FN 2: Dice 2/(2+1+2) = 0.4, IoU 1/4.
    assert out["dice"] == pytest.approx(0.4)
    assert out["iou"] == pytest.approx(0.25)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(1 / 3)
    # t in [0.0, 0.125): TP 3, FP 2 -> 0.75; t in [0.125, 0.25): TP 3, FP 1 -> 6/7 (the maximum); t in
    # [0.25, 0.375): TP 2, FP 1 -> 2/3. Ties within [0.13, 0.24] go to the value closest to 0.5: 0.24.
    assert out["best_threshold"] == pytest.approx(0.24)
    assert out["dice_best"] == pytest.approx(6 / 7)
    assert out["iou_best"] == pytest.approx(3 / 4)
    assert "dice_oracle" not in out


def test_planted_optimum_and_fixed_threshold():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)) < 0.2
    # Foreground probabilities in (0.62, 0.70), background in [0.0, 0.60): t in [0.60, 0.62) separates them.
    probs = np.where(gt, 0.62 + 0.08 * rng.random(gt.shape), 0.60 * rng.random(gt.shape))
    m = SegMetric(prefix="val")
    m.process(None, [sample("x.png", probs, gt, ["a", "b", "c"])])
    out = m.evaluate(size=1)
    assert out["val/best_threshold"] == pytest.approx(0.60)  # grid optima 0.60, 0.61: the one closest to 0.5
    assert out["val/dice_best"] == pytest.approx(1.0)
    assert out["val/dice"] < 0.9  # background up to 0.6 leaks in at 0.5
    assert m.results == []  # cleared for the next validation
    # A threshold fixed elsewhere (e.g. on a validation set) is used as given; the oracle is reported too.
    fixed = SegMetric(threshold=0.3, prefix="test")
    fixed.process(None, [sample("x.png", probs, gt, ["a", "b", "c"])])
    out = fixed.evaluate(size=1)
    assert out["test/best_threshold"] == pytest.approx(0.3)
    expected = np.mean([dice(p > 0.3, g) for p, g in zip(probs, gt)])
    assert out["test/dice_best"] == pytest.approx(expected)
    assert out["test/dice_oracle"] == pytest.approx(1.0)
    assert out["test/oracle_threshold"] == pytest.approx(0.60)


def test_threshold_off_grid_or_missing_half_is_rejected():
    with pytest.raises(ValueError, match="not on the evaluator grid"):
        SegMetric(threshold=0.123)
    with pytest.raises(ValueError, match=r"0\.5"):
        SegMetric(thresholds=[0.1, 0.4, 0.6])


def test_shape_mismatch_names_the_sample():
    m = SegMetric()
    bad = {
        "image_id": "bad.jpg",
        "texts": ["v"],
        "probs": torch.zeros(1, 4, 4),
        "gt": torch.zeros(1, 4, 5, dtype=bool),
    }
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        m.process(None, [bad])


def _states(metric: SegMetric, samples: list[dict]) -> list[dict]:
    metric.process(None, samples)
    out, metric.results = metric.results, []
    return out


def test_dedup_drops_padded_repeats_and_rejects_conflicts():
    m = SegMetric()
    a = sample("a.jpg", PROBS, GT)
    b = sample("b.jpg", [[[0.75, 0.75, 0.75], [0.75, 0.75, 0.75]]], GT)
    # Rank 0 got [a], rank 1 got [b, a(pad)]: the repeat of a is dropped, each query counted once.
    results = _states(m, [a]) + _states(m, [b, a])
    ev, dups = merge_sample_states(results, m.thresholds)
    assert dups == 1
    assert ev.keys == [query_key("a.jpg", 0, "vessel"), query_key("b.jpg", 0, "vessel")]
    out = m.compute_metrics(results)
    assert out["dice"] == pytest.approx((0.4 + 2 * 3 / (2 * 3 + 3)) / 2)
    # Same key, different content: two records with the same image path would be silently merged -> error.
    other = sample("a.jpg", [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], GT)
    with pytest.raises(ValueError, match="unique image path"):
        merge_sample_states(_states(m, [a]) + _states(m, [other]), m.thresholds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, shards: list[list[tuple]], queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = SegMetric(prefix="val", cl_dice=False)
        m.process(None, [sample(*s) for s in shards[rank]])
        out = m.evaluate(size=3)
        queue.put((rank, out, m.last_duplicates if rank == 0 else None))
    finally:
        dist.destroy_process_group()


def test_two_process_gather_counts_each_query_once():
    """gloo, 2 ranks; a DefaultSampler-like padded shard: rank 0 [s0, s2], rank 1 [s1, s0 (pad)]."""
    rng = np.random.default_rng(1)
    specs = []
    for i in range(3):
        gt = rng.random((1, 16, 16)) < 0.3
        specs.append((f"img{i}.jpg", np.where(gt, 0.8, 0.1) * rng.random((1, 16, 16)), gt))
    shards = [[specs[0], specs[2]], [specs[1], specs[0]]]
    single = SegMetric(prefix="val", cl_dice=False)
    single.process(None, [sample(*s) for s in specs])
    expected = single.evaluate(size=3)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(
        _worker, args=(2, _free_port(), shards, queue), nprocs=2, join=True, start_method="spawn"
    )
    got = dict((r, (o, d)) for r, o, d in (queue.get(timeout=60) for _ in range(2)))
    assert got[0][1] == 1  # one padded repeat dropped on rank 0
    for rank in (0, 1):  # every rank receives the same metrics
        assert got[rank][0] == pytest.approx(expected)
