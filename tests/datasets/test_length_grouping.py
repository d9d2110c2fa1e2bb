"""RefSegDataset.lengths (exact, no decoding) and LengthGroupedSampler: grouping, coverage per rank,
determinism per seed/epoch, index-level resume, config wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from mmengine.runner import Runner
from PIL import Image

from projects.sa2va.configs import config_path
from projects.sa2va.datasets import refseg
from projects.sa2va.datasets.augment import SegAugment
from projects.sa2va.datasets.image_processing import InternVLImageProcessor
from projects.sa2va.datasets.processor import Sa2VAProcessor
from projects.sa2va.datasets.refseg import RefSegDataset
from projects.sa2va.datasets.samplers import LengthGroupedSampler
from projects.sa2va.engine.loops import _SkipOnceSampler
from tests.tiny import TINY_MODEL_CFG

# (width, height, texts): 1 to 9 tiles of 56 px, 1 to 4 objects with texts of different token counts.
RECORDS = [
    (56, 56, ["vessel"]),
    (168, 56, ["blood vessel", "the thin artery near the optic disc"]),
    (112, 112, ["vein", "artery", "a long tortuous small vessel"]),
    (56, 168, ["x", "optic disc", "macula", "a very long referring expression of a vessel"]),
    (200, 120, ["vessel", "vessel"]),
    (90, 60, ["retina"]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    (root / "images").mkdir()
    records = []
    for i, (w, h, texts) in enumerate(RECORDS):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        poly = [[1.0, 1.0, w - 2.0, 1.0, w / 2, h - 2.0]]
        records.append({"image": f"{i}.png", "text": texts, "mask": [poly] * len(texts)})
    (root / "ann.json").write_text(json.dumps(records))
    return root


def make_dataset(data, **overrides) -> RefSegDataset:
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    kwargs = dict(
        ann_file=str(data / "ann.json"),
        image_root=str(data / "images"),
        processor=dict(
            type=Sa2VAProcessor,
            tokenizer=tiny.tokenizer,
            template=tiny.template,
            image_processor=dict(type=InternVLImageProcessor, tile_size=56, num_image_token=4, max_tiles=6),
            sam2_size=64,
        ),
        objects_per_image=3,
        repeats=3,
    )
    kwargs.update(overrides)
    return RefSegDataset(**kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(random_templates=False),
        dict(random_templates=False, objects_per_image=None, system="You segment."),
        dict(random_templates=True),
    ],
)
def test_lengths_equal_item_lengths_without_decoding(data, monkeypatch, overrides):
    ds = make_dataset(data, **overrides)
    items = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    fresh = make_dataset(data, **overrides)

    def no_decoding(*args, **kwargs):
        raise AssertionError("lengths must not decode images or masks")

    monkeypatch.setattr(refseg, "decode_record_masks", no_decoding)
    monkeypatch.setattr(RefSegDataset, "load_image", no_decoding)
    assert fresh.lengths == items
    assert len(set(items)) > 3  # tile counts and texts differ


def test_augmentation_keeps_lengths(data):
    ds = make_dataset(data, random_templates=True, augment=SegAugment(hflip=0.5, rot90=0.5, scale=(0.8, 1.2)))
    assert ds.lengths == [len(ds[i]["input_ids"]) for i in range(len(ds))]


def ranks_of(dataset, world_size: int, monkeypatch, **kwargs) -> list[list[int]]:
    """The index order of every simulated rank."""
    out = []
    for rank in range(world_size):
        monkeypatch.setattr("mmengine.dataset.sampler.get_dist_info", lambda r=rank: (r, world_size))
        out.append(list(LengthGroupedSampler(dataset, **kwargs)))
    return out


def test_batches_group_similar_lengths(data):
    ds = make_dataset(data, repeats=10)
    lengths = ds.lengths

    def spread(order: list[int]) -> int:
        return sum(
            max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in zip(order[::2], order[1::2])
        )

    grouped = list(LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=8, seed=0))
    plain = list(DefaultSampler(ds, shuffle=True, seed=0))
    assert sorted(grouped) == list(range(len(ds)))
    assert spread(grouped) < 0.5 * spread(plain)
    assert lengths[grouped[0]] == max(lengths)  # the longest batch first: an OOM shows at step 1


def test_every_index_once_per_epoch_across_two_ranks(data, monkeypatch):
    ds = make_dataset(data, repeats=4)  # 24 samples: divisible by 2, no padding
    for epoch in (0, 1):
        per_rank = []
        for rank in range(2):
            monkeypatch.setattr("mmengine.dataset.sampler.get_dist_info", lambda r=rank: (r, 2))
            s = LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=2, seed=7)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert len(per_rank[-1]) == len(s) == 12
        assert sorted(per_rank[0] + per_rank[1]) == list(range(len(ds)))
    # 18 samples over 4 ranks: padded by round_up like DefaultSampler, every index still present.
    odd = make_dataset(data, repeats=3)
    orders = ranks_of(odd, 4, monkeypatch, batch_size=2, seed=7)
    flat = [i for o in orders for i in o]
    assert {len(o) for o in orders} == {5} and set(flat) == set(range(len(odd)))


def test_order_is_a_function_of_seed_and_epoch(data):
    ds = make_dataset(data, repeats=5)

    def order(seed: int, epoch: int) -> list[int]:
        s = LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=2, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(1, 0) == order(1, 0)
    assert order(1, 1) == order(1, 1)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_resume_skips_at_index_level(data):
    """Sa2VATrainLoop wraps the sampler and skips the seen batches by index: same batches as no stop."""
    ds = make_dataset(data, repeats=5)
    sampler = LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=2, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    skipper = _SkipOnceSampler(LengthGroupedSampler(ds, batch_size=2, mega_batch_mult=2, seed=3))
    skipper.set_epoch(2)
    skipper.skip = 3 * 2
    assert list(skipper) == full[6:]
    assert list(skipper) == full  # the skip applies once


def test_config_opt_in_builds_a_grouped_loader(data):
    cfg = Config.fromfile(str(config_path("_base_/dataset_refseg")))
    assert cfg.train_dataloader.sampler.type is DefaultSampler  # opt-in only
    loader_cfg = cfg.train_dataloader
    loader_cfg.sampler = cfg.length_grouped_sampler
    loader_cfg.update(num_workers=0, persistent_workers=False, pin_memory=False)
    loader_cfg.dataset = make_dataset(data, repeats=4)
    loader = Runner.build_dataloader(loader_cfg, seed=11)
    assert isinstance(loader.sampler, LengthGroupedSampler)
    assert loader.sampler.seed == 11 and loader.sampler.batch_size == loader.batch_size
    batch = next(iter(loader))["data"]
    assert batch.input_ids.shape[1] == max(loader.dataset.lengths)
