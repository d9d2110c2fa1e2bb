# An annotations.json referring-segmentation set (see data/README.md for the record format).
from mmengine.dataset import DefaultSampler

from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.refseg import RefSegDataset

data_root = "data/chase_db1"
batch_size = 2
num_workers = 4

train_dataset = dict(
    type=RefSegDataset,
    ann_file=data_root + "/annotations_train.json",
    image_root=data_root + "/images",
    tokenizer=None,  # set by the model base (tokenizer) in the leaf config
    template=None,
    objects_per_image=5,
    repeats=1,
    max_tiles=12,
    augment=None,
    seed=0,
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
