"""A length-grouped training sampler (less padding per batch), seeded like mmengine's ``DefaultSampler``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from mmengine.dataset import DefaultSampler
from mmengine.registry import DATA_SAMPLERS


def dataset_lengths(dataset) -> list[int]:
    """Per-sample token lengths: ``dataset.lengths`` (a sequence) or ``dataset.sample_length(i)``."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return [int(x) for x in lengths]
    fn = getattr(dataset, "sample_length", None)
    if fn is None:
        raise TypeError(
            f"{type(dataset).__name__} has neither `lengths` nor `sample_length(index)`: "
            "LengthGroupedSampler needs one of them"
        )
    return [int(fn(i)) for i in range(len(dataset))]


@DATA_SAMPLERS.register_module()
class LengthGroupedSampler(DefaultSampler):
    """Random order, but samples of similar length end up in the same batch.

    The indices are shuffled exactly as :class:`DefaultSampler` does (``seed + epoch``; the same on
    every rank), cut into mega-batches of ``mega_batch_mult * batch_size * world_size`` indices, and
    each mega-batch is sorted by length, longest first. Rank ``r`` takes every ``world_size``-th
    index from ``r`` (as ``DefaultSampler``), so the ``i``-th batch of every rank holds neighbours in
    the sorted order. The longest mega-batch goes first, so an out-of-memory shows up at step 1.

    Args:
        dataset: a dataset with ``lengths`` or ``sample_length(index)`` (tokens per sample).
        batch_size: the per-rank batch size of the DataLoader.
        mega_batch_mult: mega-batch size in global batches (larger: less padding, less randomness).
        shuffle, seed, round_up: as in :class:`DefaultSampler`.
        lengths: explicit per-sample lengths (overrides the dataset's).
    """

    def __init__(
        self,
        dataset,
        *,
        batch_size: int,
        mega_batch_mult: int = 16,
        shuffle: bool = True,
        seed: int | None = None,
        round_up: bool = True,
        lengths: Sequence[int] | None = None,
    ) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(
                f"batch_size and mega_batch_mult must be >= 1, got {batch_size}, {mega_batch_mult}"
            )
        self.lengths = [int(x) for x in lengths] if lengths is not None else dataset_lengths(dataset)
        if len(self.lengths) != len(dataset):
            raise ValueError(f"{len(self.lengths)} lengths for a dataset of {len(dataset)} samples")
        self.batch_size = batch_size
        self.mega_batch_mult = mega_batch_mult

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        mega = self.mega_batch_mult * self.batch_size * self.world_size
        groups = [
            sorted(indices[i : i + mega], key=lambda k: -self.lengths[k])
            for i in range(0, len(indices), mega)
        ]
        if groups:
            first = max(range(len(groups)), key=lambda j: self.lengths[groups[j][0]])
            groups[0], groups[first] = groups[first], groups[0]
        indices = [i for grp in groups for i in grp]
        if self.round_up:
            indices = (indices * int(self.total_size / len(indices) + 1))[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.world_size])
