"""InternVL dynamic tiling, pixel normalisation for both branches, image token strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from projects.sa2va.datasets.image_processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_CONTEXT_TOKEN,
    SAM2_INFER_MEAN,
    SAM2_INFER_STD,
    dynamic_tiles,
    find_closest_grid,
    image_token_string,
    internvl_pixel_values,
    model_pixels,
    normalize_pixels,
    sam2_pixel_values,
    tile_grids,
)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_tile_grids() -> None:
    grids = tile_grids(1, 12)
    products = [c * r for c, r in grids]
    assert products == sorted(products) and products[0] == 1 and max(products) == 12
    # all (c, r) with c*r <= 12: sum over n of the number of divisors of n
    assert len(grids) == sum(sum(1 for d in range(1, n + 1) if n % d == 0) for n in range(1, 13))
    assert set(tile_grids(2, 4)) == {(1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)}
    with pytest.raises(ValueError, match="min_num=3"):
        tile_grids(3, 2)


@pytest.mark.parametrize(
    ("size", "grid", "n_out"),
    [
        # aspect 1: (1,1), (2,2), (3,3) tie at diff 0; a later one wins iff area > 0.5*448^2*c*r,
        # i.e. 401408 for 2x2 and 903168 for 3x3.
        ((512, 512), (1, 1), 1),  # 262144: neither -> 1 tile, no thumbnail
        ((700, 700), (2, 2), 5),  # 490000 > 401408, < 903168 -> 2x2 + thumbnail
        ((1000, 1000), (3, 3), 10),  # 1e6 > 903168 -> 3x3 + thumbnail
        # CHASE_DB1: aspect 999/960 = 1.0406; nearest ratio is 1 (4/3 = 1.33 is farther); same tie
        # rule with area 959040 > 903168 -> 3x3 + thumbnail.
        ((999, 960), (3, 3), 10),
        ((1000, 250), (4, 1), 5),  # aspect 4: only (4, 1) matches exactly
        ((300, 900), (1, 3), 4),  # aspect 1/3: (1, 3); (2, 6) and (3, 9) exceed 12 tiles
    ],
)
def test_dynamic_tiles_grid(size: tuple[int, int], grid: tuple[int, int], n_out: int) -> None:
    width, height = size
    assert find_closest_grid(width=width, height=height, grids=tile_grids(1, 12), tile_size=448) == grid
    tiles = dynamic_tiles(_image(width, height))
    assert len(tiles) == n_out
    assert all(t.size == (448, 448) and t.mode == "RGB" for t in tiles)


def test_dynamic_tiles_order_and_thumbnail() -> None:
    colours = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40  # 2 rows x 3 cols of flat colours
    arr = np.repeat(np.repeat(colours, 448, axis=0), 448, axis=1)
    image = Image.fromarray(np.stack([arr] * 3, axis=-1))  # 1344 x 896, aspect 1.5 -> grid (3, 2)
    tiles = dynamic_tiles(image)
    assert len(tiles) == 7
    for k, tile in enumerate(tiles[:6]):
        np.testing.assert_array_equal(np.asarray(tile), np.full((448, 448, 3), k * 40, dtype=np.uint8))
    thumb = np.asarray(image.resize((448, 448), resample=Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(np.asarray(tiles[6]), thumb)
    assert len(dynamic_tiles(image, use_thumbnail=False)) == 6
    assert len(dynamic_tiles(image, max_num=1)) == 1


def test_dynamic_tiles_resizes_bicubic_and_converts_mode() -> None:
    image = _image(999, 960)
    expect = image.resize((3 * 448, 3 * 448), resample=Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(dynamic_tiles(image)[4]), np.asarray(expect)[448:896, 448:896])
    gray = image.convert("L").resize((256, 256))
    (tile,) = dynamic_tiles(gray, tile_size=64, max_num=1)
    assert tile.mode == "RGB" and tile.size == (64, 64)


def test_internvl_pixel_values_matches_torchvision() -> None:
    tiles = dynamic_tiles(_image(700, 700))
    x = internvl_pixel_values(tiles)
    assert x.shape == (5, 3, 448, 448) and x.dtype == torch.float32
    ref = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x, torch.stack([ref(t) for t in tiles]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="tile 1"):
        internvl_pixel_values([tiles[0], tiles[0].resize((10, 10))])


def test_sam2_pixel_values() -> None:
    arr = np.asarray(_image(512, 384, seed=1))
    x = sam2_pixel_values(arr)
    assert x.shape == (3, 1024, 1024) and x.dtype == torch.float32
    raw = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None]
    up = F.interpolate(raw, size=(1024, 1024), mode="bilinear", align_corners=False, antialias=False)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (up / 255.0 - mean) / std)
    torch.testing.assert_close(sam2_pixel_values(Image.fromarray(arr)), x, rtol=0, atol=0)
    # flat white image -> exactly (1 - mean) / std; inference constants differ slightly
    white = np.full((100, 60, 3), 255, dtype=np.uint8)
    out = sam2_pixel_values(white, size=32, mean=SAM2_INFER_MEAN, std=SAM2_INFER_STD)
    expect = (1.0 - torch.tensor(SAM2_INFER_MEAN)) / torch.tensor(SAM2_INFER_STD)
    torch.testing.assert_close(out[:, 5, 7], expect)
    pil = sam2_pixel_values(arr, size=64, resample="pil_bicubic")
    assert pil.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="float32"):
        sam2_pixel_values(arr.astype(np.float32))
    with pytest.raises(ValueError, match="nearest"):
        sam2_pixel_values(arr, resample="nearest")


def test_bf16_inference_constants() -> None:
    for exact, rounded in ((IMAGENET_MEAN, SAM2_INFER_MEAN), (IMAGENET_STD, SAM2_INFER_STD)):
        as_bf16 = torch.tensor(exact, dtype=torch.float32).to(torch.bfloat16).float()
        assert tuple(as_bf16.tolist()) == rounded
        # bf16 and fp32 agree on them, so the fp32 tuples lose nothing
        assert torch.tensor(rounded).to(torch.bfloat16).float().tolist() == list(rounded)


def test_image_token_string() -> None:
    s = image_token_string(3, 256)
    assert s.startswith("<img>") and s.endswith("</img>")
    assert s.count(IMG_CONTEXT_TOKEN) == 768
    assert len(s) == len("<img>") + 768 * len(IMG_CONTEXT_TOKEN) + len("</img>")
    with pytest.raises(ValueError, match="0"):
        image_token_string(0, 256)


def test_uint8_pixels_normalised_later_are_bit_identical() -> None:
    img = _image(999, 960, seed=3)
    tiles = dynamic_tiles(img, tile_size=64, max_num=6)
    raw = internvl_pixel_values(tiles, normalize=False)
    assert raw.dtype == torch.uint8 and raw.shape == (len(tiles), 3, 64, 64)
    assert torch.equal(model_pixels(raw, "cpu"), internvl_pixel_values(tiles))
    arr = np.asarray(img)
    g_raw = sam2_pixel_values(arr, size=128, resample="pil_bicubic", normalize=False)
    assert g_raw.dtype == torch.uint8 and g_raw.shape == (3, 128, 128)
    assert torch.equal(normalize_pixels(g_raw), sam2_pixel_values(arr, size=128, resample="pil_bicubic"))
    # Same size: no resize at all, the pixels themselves.
    same = sam2_pixel_values(arr[:128, :128], size=128, resample="pil_bicubic", normalize=False)
    assert torch.equal(same, torch.from_numpy(arr[:128, :128].copy()).permute(2, 0, 1))
    # A float tensor is taken as already normalised.
    f = torch.randn(2, 3, 8, 8)
    assert model_pixels(f, "cpu") is f
    with pytest.raises(ValueError, match="pil_bicubic"):
        sam2_pixel_values(arr, size=128, resample="bilinear", normalize=False)
    with pytest.raises(ValueError, match="uint8"):
        normalize_pixels(f)
