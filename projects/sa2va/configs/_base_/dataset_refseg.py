# An annotations.json referring-segmentation set (see data/README.md for the record format).
from mmengine.dataset import DefaultSampler

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.refseg import RefSegDataset
from projects.sa2va.datasets.samplers import LengthGroupedSampler

data_root = "data/chase_db1"
batch_size = 2
num_workers = 4

train_dataset = dict(
    type=RefSegDataset,
    ann_file=data_root + "/annotations_train.json",
    image_root=data_root + "/images",
    processor=None,  # the model base's `processor` (tokenizer, template, tiling, SAM2 input), set in the leaf
    objects_per_image=5,
    repeats=1,
    augment=None,
    seed=0,
)
# Opt-in length-grouped batches (less padding when images differ in tile count or records in object
# count): in a leaf config, `train_dataloader.sampler = length_grouped_sampler` (after changing the batch
# size, also `length_grouped_sampler.batch_size`, which sizes its mega-batches). Seeded and resumable like
# DefaultSampler; lengths come from RefSegDataset.lengths (exact token counts, no image decoding).
length_grouped_sampler = dict(
    type=LengthGroupedSampler, batch_size=batch_size, mega_batch_mult=16, shuffle=True
)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=num_workers,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=sa2va_collate, digests=True),  # feature-cache keys hashed in the workers
    dataset=train_dataset,
)
