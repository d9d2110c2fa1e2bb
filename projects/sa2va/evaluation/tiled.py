"""Tiled and flip-TTA teacher-forced evaluation: a drop-in for ``model.val_step`` in ``tools/test.py``.

:class:`TiledEvalStep` takes the batches of an evaluation
:class:`~projects.sa2va.datasets.refseg.RefSegDataset` (every object in record order, first wording,
no augmentation: ``evaluate.build_eval_dataset``) and returns what ``Sa2VAModel(mode='predict')``
returns, per sample ``image_id``, ``texts``, ``probs [n, H, W]`` float32 in ``[0, 1]`` at the image
size and ``gt [n, H, W]`` bool, but with the probabilities computed the way
:class:`~projects.sa2va.inference.predictor.Sa2VAPredictor` computes them with ``tiling`` /
``flip_tta``:

* every view (each window of :func:`~projects.sa2va.tiling.tile_windows` when the image is
  tiled, else the whole image; plus each one mirrored left-right with flip TTA) is made into a sample
  by the dataset itself, as it makes one from a whole image (:func:`view_item`: InternVL dynamic tiles
  or the Qwen-VL image processor of the crop, the SAM2 input of the crop, the same conversation with
  ``[SEG]`` answers, the masks cropped);
* the views go through ``model.val_step`` in batches (their probabilities come back at the crop's
  own size), mirrored views are mirrored back, and the windows are blended with the raised-cosine
  weights of :class:`~projects.sa2va.tiling.WindowBlender` into the full-size map.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from mmengine.logging import MMLogger
from PIL import Image

from ..datasets.annotations import decode_record_masks, encode_mask_rle
from ..datasets.collate import sa2va_collate
from ..tiling import TilingOptions, Window, WindowBlender, iter_chunks

__all__ = ["TiledEvalStep", "view_item"]


def view_item(dataset: Any, index: int, image: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """The sample ``dataset[index]`` would be if its record's image were ``image`` and its masks ``masks``.

    Built by the dataset's own ``__getitem__`` on a shallow copy of it whose ``load_image`` returns
    ``image`` and whose record ``index`` holds ``masks`` (as RLE), so a view is made exactly as a whole
    image is (objects, turns, wording, tiling, SAM2 input, checks).

    Args:
        dataset: an evaluation :class:`RefSegDataset` (no augmentation).
        index: the sample index (its record, objects and wording).
        image: ``[h, w, 3]`` uint8 RGB (a window of the record's image, possibly mirrored).
        masks: ``[N, h, w]`` bool masks of ALL the record's objects on ``image``, in record order.

    Returns:
        the dataset item (``input_ids``, ``labels``, ``pixel_values`` [+ ``image_grid_thw``],
        ``g_pixel_values``, ``masks [n, h, w]`` uint8, ``image_id``, ``texts``, ...).
    """
    if dataset.augment is not None:
        raise ValueError("tiled / flip-TTA evaluation needs an evaluation dataset without augmentation")
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"view image must be [h, w, 3] uint8, got {image.shape} {image.dtype}")
    rec_idx = index % len(dataset.records)
    rec = dataset.records[rec_idx]
    if masks.shape != (len(rec["mask"]), *image.shape[:2]):
        raise ValueError(
            f"{dataset.ann_file}: record {rec_idx}: view masks {masks.shape} for {len(rec['mask'])} objects "
            f"on a {image.shape[0]}x{image.shape[1]} view"
        )
    view = copy.copy(dataset)
    view.records = list(dataset.records)
    view.records[rec_idx] = {
        **rec,
        "mask": [[encode_mask_rle(np.ascontiguousarray(m, dtype=bool))] for m in masks],
    }
    view.load_image = lambda record, i: Image.fromarray(image)
    return view[index]


class TiledEvalStep:
    """``model.val_step`` with tiled and/or flip-TTA masks (see the module docstring).

    Args:
        model: the built Sa2VA model (eval mode).
        dataset: the evaluation dataset the batches come from (images are re-read from it at full
            resolution; its image ids must be unique, as :class:`SegMetric` requires anyway).
        tiling: :class:`TilingOptions` (or its dict / mode string); the default window is the model's
            SAM2 input size.
        flip_tta: also predict every view mirrored left-right and average (mirrored back).
        window_batch_size: views per ``model.val_step`` call.
    """

    def __init__(
        self,
        model: Any,
        dataset: Any,
        *,
        tiling: TilingOptions | dict | str | None = None,
        flip_tta: bool = False,
        window_batch_size: int = 4,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.tiling = TilingOptions.parse(tiling)
        self.flip_tta = bool(flip_tta)
        if (
            isinstance(window_batch_size, bool)
            or not isinstance(window_batch_size, int)
            or window_batch_size < 1
        ):
            raise ValueError(f"window_batch_size must be a positive integer, got {window_batch_size!r}")
        self.window_batch_size = window_batch_size
        self.model_size = int(dataset.sam2_image_size)
        self._index: dict[str, int] = {}
        for i, rec in enumerate(dataset.records):
            image_id = str(rec["image"])
            if image_id in self._index:
                raise ValueError(
                    f"{dataset.ann_file}: records {self._index[image_id]} and {i} share the image "
                    f"{image_id!r}; tiled evaluation needs one record per image"
                )
            self._index[image_id] = i
        self.views_run = 0  # views sent through the model so far

    @property
    def active(self) -> bool:
        """Whether this step differs from ``model.val_step`` for some image (tiling not off, or flip)."""
        return self.flip_tta or self.tiling.mode != "off"

    def __call__(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """``batch``: a collated batch (``{'data': Sa2VABatch, ...}``) of the dataset; returns the
        ``Sa2VAModel.predict`` outputs with the blended probabilities."""
        data = batch["data"]
        outputs = []
        for i, image_id in enumerate(data.image_ids):
            gt = data.masks[i].bool()
            outputs.append(
                {
                    "image_id": image_id,
                    "texts": data.texts[i] if data.texts else [],
                    "probs": torch.from_numpy(self.sample_probs(image_id, tuple(gt.shape))),
                    "gt": gt.cpu(),
                }
            )
        return outputs

    def val_step(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The same as calling the step: lets it stand in for the model where ``val_step`` is called."""
        return self(batch)

    @torch.no_grad()
    def sample_probs(self, image_id: str, shape: tuple[int, int, int]) -> np.ndarray:
        """``[n, H, W]`` float32 blended probabilities of the sample of record ``image_id`` whose ground
        truth has ``shape`` ``(n, H, W)``."""
        if image_id not in self._index:
            raise KeyError(f"{self.dataset.ann_file}: no record has the image {image_id!r}")
        index = self._index[image_id]
        rec = self.dataset.records[index]
        image = np.asarray(self.dataset.load_image(rec, index).convert("RGB"))
        h, w = image.shape[:2]
        n = int(shape[0])
        if (h, w) != tuple(shape[1:]):
            raise ValueError(f"{image_id}: image {h}x{w} differs from its masks {shape[1]}x{shape[2]}")
        masks = decode_record_masks(rec, h, w, validated=True)
        tiled = self.tiling.applies(h, w, self.model_size)
        side = self.tiling.window_for(self.model_size) if tiled else max(h, w)
        blender = WindowBlender(h, w, side, self.tiling.overlap, n)
        views: list[tuple[Window, bool]] = [
            (win, mirrored)
            for win in blender.windows
            for mirrored in ((False, True) if self.flip_tta else (False,))
        ]
        for chunk in iter_chunks(views, self.window_batch_size):
            items = []
            for win, mirrored in chunk:
                crop, crop_masks = win.crop(image), masks[:, win.slices[0], win.slices[1]]
                if mirrored:
                    crop, crop_masks = crop[:, ::-1], crop_masks[:, :, ::-1]
                items.append(view_item(self.dataset, index, crop, np.ascontiguousarray(crop_masks)))
            outs = self.model.val_step(sa2va_collate(items))
            self.views_run += len(items)
            for (win, mirrored), out in zip(chunk, outs):
                probs = torch.as_tensor(out["probs"]).float().cpu().numpy()
                blender.add(win, probs[:, :, ::-1] if mirrored else probs)
        if tiled:
            MMLogger.get_current_instance().info(
                f"{image_id}: {h}x{w} masks blended from {blender.added} forwards over "
                f"{len(blender.windows)} windows of {side} px (overlap {self.tiling.overlap}"
                f"{', each also mirrored' if self.flip_tta else ''})"
            )
        return blender.result()
