"""SAM2 as Sa2VA's grounding encoder: a frozen image encoder plus a language-prompted mask decoder.

The SAM2 network itself comes from the ``sam2`` package (1.1.0), built from the package's own yaml
configs with ``hydra.utils.instantiate`` (no second hydra initialisation) and optional overrides.
This module only adds the Sa2VA prompting path on top of it:

* prompt = one padding point (coords (0, 0), label -1) + the language embedding appended as one more
  sparse token; the dense prompt is SAM2's learned no-mask embedding;
* ``no_mem_embed`` is added to the lowest-resolution feature (single-image path, no memory);
* high-resolution features (``conv_s0`` / ``conv_s1`` of the mask decoder) are used;
* multimask output, keeping the mask with the highest predicted IoU;
* the object score does not suppress the mask (matches the official Sa2VA inference).

The split between :meth:`SAM2GroundingEncoder.encode_image` (the frozen image encoder: trunk + neck)
and :meth:`SAM2GroundingEncoder.decode_masks` (everything downstream, including the trainable
``conv_s0`` / ``conv_s1`` that SAM2 applies inside ``forward_image``) is what makes the image
features cacheable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ..pixels import model_pixels
from .fast_init import default_dtype, weight_init_restored

SAM2_CONFIG_PACKAGE = "sam2"


def _plain(obj: Any) -> Any:
    """Nested mappings/sequences (e.g. mmengine ``ConfigDict``) -> plain dicts and lists for OmegaConf."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def load_sam2_config(config_name: str = "sam2_hiera_l.yaml", overrides: dict | None = None) -> Any:
    """Read one of the ``sam2`` package's model yaml files and merge ``overrides`` into its ``model``.

    Args:
        config_name: file name inside the installed ``sam2`` package, e.g. ``sam2_hiera_l.yaml``
            (SAM2, the one Sa2VA uses) or ``configs/sam2.1/sam2.1_hiera_l.yaml``.
        overrides: nested dict merged into the ``model`` node (e.g. a tiny trunk for tests).

    Returns:
        The OmegaConf node of the model.
    """
    candidates = [config_name, f"configs/sam2/{config_name}"]
    root = resources.files(SAM2_CONFIG_PACKAGE)
    for rel in candidates:
        path = root.joinpath(rel)
        if path.is_file():
            cfg = OmegaConf.load(str(path))
            break
    else:
        raise FileNotFoundError(
            f"SAM2 config {config_name!r} not found in the installed sam2 package (looked for {candidates})"
        )
    model_cfg = cfg.model
    if overrides:
        model_cfg = OmegaConf.merge(model_cfg, OmegaConf.create(_plain(overrides)))
    return model_cfg


def build_sam2(config_name: str = "sam2_hiera_l.yaml", overrides: dict | None = None) -> nn.Module:
    """Instantiate ``sam2.modeling.sam2_base.SAM2Base`` from a package config (random weights)."""
    return instantiate(load_sam2_config(config_name, overrides), _recursive_=True)


@dataclass
class SAM2ImageFeatures:
    """Output of the frozen SAM2 image encoder (trunk + neck), before any trainable layer.

    Attributes:
        fpn: three feature maps, highest resolution first, each ``[B, C, h_l, w_l]`` with
            ``C = hidden_dim`` (256 for Hiera-L) and ``h_l = image_size / 4, / 8, / 16``.
    """

    fpn: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.fpn[0].shape[0]

    def to(self, *args: Any, **kwargs: Any) -> SAM2ImageFeatures:
        return SAM2ImageFeatures([f.to(*args, **kwargs) for f in self.fpn])

    def index_select(self, index: torch.Tensor) -> SAM2ImageFeatures:
        """Rows ``index`` of every level (``index``: ``[N]`` long) -> features for ``N`` images."""
        return SAM2ImageFeatures([f.index_select(0, index) for f in self.fpn])


class SAM2GroundingEncoder(nn.Module):
    """SAM2 with Sa2VA's language prompt.

    Args:
        config_name: ``sam2`` package yaml of the architecture (``sam2_hiera_l.yaml`` for Sa2VA).
        overrides: nested overrides of that yaml's ``model`` node.
        multimask_output: predict 3 masks and keep the one with the highest predicted IoU (reference).
        suppress_no_object: replace the logits by SAM2's no-object score where the object score is
            negative (SAM2's video behaviour; off in Sa2VA).
        torch_dtype: dtype of the weights (``None``: float32), the SAM2 network is built directly in
            it; trainable parts are cast back to fp32 by ``Sa2VAModel``.
        upsampler: optional :class:`~projects.sa2va.models.upsampler.MaskUpsampler` settings (dict of its
            arguments, ``in_channels`` filled in here); then ``decode_masks`` returns refined logits at
            ``scale`` x the low-res size. ``None`` (default): the reference 1/4-resolution logits. It is
            initialised even inside :func:`~.fast_init.no_weight_init` (official folders do not hold it).
    """

    def __init__(
        self,
        *,
        config_name: str = "sam2_hiera_l.yaml",
        overrides: dict | None = None,
        multimask_output: bool = True,
        suppress_no_object: bool = False,
        torch_dtype: str | torch.dtype | None = None,
        upsampler: dict | None = None,
    ) -> None:
        super().__init__()
        #: The architecture arguments (plain JSON-serialisable copies): an HF export records them when they
        #: differ from the official SAM2 Hiera-L (``checkpoint/hf_sa2va.py`` ``sa2va_toolkit`` section).
        self.build_settings: dict[str, Any] = json.loads(
            json.dumps({"config_name": config_name, "overrides": overrides or None, "upsampler": upsampler})
        )
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        with default_dtype(dtype):
            self.sam2_model = build_sam2(config_name, overrides)
        self.upsampler = None
        if upsampler is not None:
            from .upsampler import MaskUpsampler

            sam = self.sam2_model
            s0 = sam.sam_mask_decoder.conv_s0.out_channels if sam.use_high_res_features_in_sam else None
            with weight_init_restored():
                self.upsampler = MaskUpsampler(in_channels=s0 or sam.hidden_dim, **upsampler)
        if dtype is not None:  # tensors a constructor creates with an explicit dtype
            self.sam2_model.to(dtype)
        self.multimask_output = multimask_output
        self.suppress_no_object = suppress_no_object

    # --- geometry -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the square SAM2 input (1024 for the released models)."""
        return int(self.sam2_model.image_size)

    @property
    def hidden_dim(self) -> int:
        """Channels of the prompt tokens (256 for the released models): the language embedding size."""
        return int(self.sam2_model.hidden_dim)

    @property
    def low_res_size(self) -> int:
        """Side of the mask logits the decoder predicts (256 at a 1024 input)."""
        return 4 * int(self.sam2_model.sam_image_embedding_size)

    # --- frozen part ----------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> SAM2ImageFeatures:
        """Run the SAM2 image encoder.

        Args:
            images: ``[B, 3, S, S]`` float, ImageNet-normalised, or uint8 pixels (normalised here),
                ``S = image_size``.

        Returns:
            :class:`SAM2ImageFeatures` with the last ``num_feature_levels`` (3) neck outputs.
        """
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"SAM2 expects {self.image_size}x{self.image_size} inputs, got {tuple(images.shape)}"
            )
        dtype = self.sam2_model.image_encoder.trunk.patch_embed.proj.weight.dtype
        out = self.sam2_model.image_encoder(model_pixels(images, images.device).to(dtype))
        levels = out["backbone_fpn"][-self.sam2_model.num_feature_levels :]
        return SAM2ImageFeatures(list(levels))

    # --- trainable part -------------------------------------------------------------------------
    def decode_masks(
        self,
        features: SAM2ImageFeatures,
        language_embeds: torch.Tensor,
        obj_to_img: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Predict one mask per language embedding.

        Args:
            features: image features of ``B`` images (from :meth:`encode_image` or a cache).
            language_embeds: ``[N, hidden_dim]``, one prompt per object.
            obj_to_img: ``[N]`` long, the image (row of ``features``) each object belongs to.
            images: ``[B, 3, S, S]`` SAM2 input, used only by the optional upsampler.

        Returns:
            dict with ``masks``: ``[N, low_res_size, low_res_size]`` float32 logits (1/4 of the
            SAM2 input resolution; ``upsampler.scale`` x that with an upsampler; the 1/4 ones are
            then in ``low_res_masks``), ``iou``: ``[N]`` predicted IoU of the kept mask,
            ``object_score``: ``[N]`` object-score logits.
        """
        sam = self.sam2_model
        decoder = sam.sam_mask_decoder
        if language_embeds.ndim != 2 or language_embeds.shape[-1] != self.hidden_dim:
            raise ValueError(
                f"language_embeds must be [N, {self.hidden_dim}], got {tuple(language_embeds.shape)}"
            )
        if obj_to_img.shape != language_embeds.shape[:1]:
            raise ValueError(f"obj_to_img {tuple(obj_to_img.shape)} != [N={language_embeds.shape[0]}]")
        dtype = decoder.iou_token.weight.dtype
        fpn = [f.to(dtype) for f in features.fpn]
        # Per-image work first (B images), then broadcast to the N objects.
        high_res = None
        if sam.use_high_res_features_in_sam:
            high_res = [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])]
        stride4 = high_res[0] if high_res is not None else fpn[0]  # per image, for the upsampler
        low = fpn[-1]
        if sam.directly_add_no_mem_embed:
            low = low + sam.no_mem_embed.to(dtype).view(1, -1, 1, 1)
        low = low.index_select(0, obj_to_img)
        if high_res is not None:
            high_res = [h.index_select(0, obj_to_img) for h in high_res]

        n = language_embeds.shape[0]
        coords = torch.zeros(n, 1, 2, device=low.device, dtype=dtype)
        labels = -torch.ones(n, 1, dtype=torch.int32, device=low.device)
        sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        sparse = torch.cat([sparse.to(dtype), language_embeds.to(dtype)[:, None, :]], dim=1)
        masks, iou, _, object_score = decoder(
            image_embeddings=low,
            image_pe=sam.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=self.multimask_output,
            repeat_image=False,
            high_res_features=high_res,
        )
        masks = masks.float()
        if self.suppress_no_object:
            masks = torch.where(object_score[:, :, None, None] > 0, masks, torch.full_like(masks, -1024.0))
        best = iou.argmax(dim=-1)
        rows = torch.arange(n, device=masks.device)
        out = {
            "masks": masks[rows, best],
            "iou": iou[rows, best].float(),
            "object_score": object_score[:, 0].float(),
        }
        if self.upsampler is not None:
            imgs = model_pixels(images, stride4.device) if images is not None else None
            out["low_res_masks"] = out["masks"]
            out["masks"] = self.upsampler(out["masks"], stride4, obj_to_img, imgs)
        return out

    def forward(
        self, images: torch.Tensor, language_embeds: torch.Tensor, obj_to_img: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``decode_masks(encode_image(images), ...)``; see those for shapes."""
        return self.decode_masks(self.encode_image(images), language_embeds, obj_to_img, images=images)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize mask logits ``[N, h, w]`` to ``[N, *size]`` (align_corners=False)."""
    return F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
