"""``tools/test.py``'s overlays read images by the toolkit's one rule (EXIF orientation applied), as
training and the metrics did: an image stored sideways with an EXIF ``Orientation`` tag is drawn upright
under its mask. It used to be drawn as stored (rotated against its masks on a square image; an error
after ``report.json`` on a non-square one)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from projects.sa2va.evaluation.evaluate import write_outputs
from projects.sa2va.evaluation.seg_metric import SegMetric


def test_overlays_apply_the_exif_orientation(tmp_path):
    upright = np.zeros((48, 64, 3), np.uint8)  # H 48, W 64 as shown
    upright[:, :32] = (200, 0, 0)  # the left half red
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored 64 x 48, shown after rotating 270
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "side.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "side.jpg") as im:
        shown = np.asarray(im.transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    assert shown.shape[:2] == (48, 64)

    gt = torch.zeros(1, 48, 64, dtype=torch.bool)
    gt[0, :, :32] = True
    metric = SegMetric(cl_dice=False)
    metric.process(None, [{"image_id": "side.jpg", "texts": ["left"], "probs": gt.float(), "gt": gt}])
    metric.evaluate(1)
    files = write_outputs(metric, tmp_path / "out", image_root=tmp_path, chosen_on="test", max_overlays=1)
    (overlay,) = [f for f in files if f.parent.name == "overlays"]
    panel = np.asarray(Image.open(overlay).convert("RGB"))
    assert panel.shape[:2] == (48, 128)  # the image (upright) beside its error map
    # Where the mask is, the overlay tints the shown image's red half; the right half is the image as shown.
    assert np.abs(panel[:, 40:64].astype(int) - shown[:, 40:64].astype(int)).max() <= 2
