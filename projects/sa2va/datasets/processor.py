"""One input contract for training data and inference: :class:`Sa2VAProcessor`.

A Sa2VA model reads a tokenised conversation, the MLLM's image input and the SAM2 image input. The
processor holds everything that turns an image and a question into those, once per model:

- the tokenizer (Sa2VA's special tokens added) and the chat template;
- the MLLM image processor, one object per family: :class:`~.image_processing.InternVLImageProcessor`
  (dynamic tiling, ``num_image_token`` per tile) or :class:`~.qwenvl_processing.QwenVLImageProcessor`
  (transformers' Qwen2-VL processor at Sa2VA's pixel budget); both give
  :class:`~.image_processing.VisionInputs` and say how many image-slot tokens an image takes, with
  their ``(start, slot, end)`` token strings;
- the SAM2 input transform (side, resize, normalisation);
- prompt building: the first user turn ``<image>\\n`` + question in the template's ``INSTRUCTION``, the
  ``<image>`` placeholder expanded to ``start + slot * n + end`` at the token level, BOS where the
  official tokenisation puts one (:mod:`.prompt`).

:class:`~.refseg.RefSegDataset` and :class:`~projects.sa2va.inference.predictor.Sa2VAPredictor` both take
it, so training and inference cannot drift apart. Build it from a Hugging Face Sa2VA folder with
:meth:`Sa2VAProcessor.from_pretrained` (the family is read from its ``config.json``, as
``Sa2VAPredictor.from_hf`` reads it), or from its parts (tiny random-weight configs)::

    processor = dict(type=Sa2VAProcessor.from_pretrained, path="models/Sa2VA-1B")
    processor = dict(type=Sa2VAProcessor, tokenizer=dict(type=build_tiny_tokenizer),
                     template=PROMPT_TEMPLATE.qwen_chat,
                     image_processor=dict(type=InternVLImageProcessor, tile_size=224, max_tiles=1),
                     sam2_size=256)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from xtuner.utils import PROMPT_TEMPLATE

from ..models.builder import build_component
from ..models.internvl import InternLM2InternVL, InternVLMLLM, Qwen2InternVL, read_hf_config
from ..models.qwenvl import Qwen2_5_VLSa2VA, Qwen3VLSa2VA, QwenVLMLLM
from ..models.tokenizer import add_sa2va_tokens, load_tokenizer
from ..pixels import IMAGENET_MEAN, IMAGENET_STD
from .image_processing import InternVLImageProcessor, VisionInputs, sam2_pixel_values
from .prompt import encode_with_image, image_question, instruction_text, prefix_ids
from .qwenvl_processing import SA2VA_MAX_PIXELS, SA2VA_MIN_PIXELS, QwenVLImageProcessor

__all__ = ["HF_LLM_ADAPTERS", "HF_QWENVL_ADAPTERS", "Sa2VAProcessor", "hf_adapter"]

#: ``llm_config.architectures`` of an InternVL-layout HF folder -> the InternVL adapter class.
HF_LLM_ADAPTERS: dict[str, type[InternVLMLLM]] = {
    "Qwen2ForCausalLM": Qwen2InternVL,
    "InternLM2ForCausalLM": InternLM2InternVL,
}
#: ``text_config.model_type`` of a Sa2VA Qwen-VL folder -> the Qwen-VL adapter class.
HF_QWENVL_ADAPTERS: dict[str, type[QwenVLMLLM]] = {
    "qwen3_vl_text": Qwen3VLSa2VA,
    "qwen2_5_vl_text": Qwen2_5_VLSa2VA,
}


def hf_adapter(folder: str | Path, hf: dict | None = None) -> type[InternVLMLLM] | type[QwenVLMLLM]:
    """The MLLM adapter class of a Hugging Face Sa2VA folder, from its ``config.json``.

    A Qwen-VL layout (``text_config`` + ``vision_config``) is looked up by ``text_config.model_type``
    (:data:`HF_QWENVL_ADAPTERS`), an InternVL layout by ``llm_config.architectures``
    (:data:`HF_LLM_ADAPTERS`).

    Raises:
        ValueError: a family without an adapter (named with the file and the field).
    """
    folder = Path(folder)
    hf = read_hf_config(folder) if hf is None else hf
    if "text_config" in hf and "vision_config" in hf:
        text_type = (hf.get("text_config") or {}).get("model_type")
        if text_type not in HF_QWENVL_ADAPTERS:
            raise ValueError(
                f"{folder / 'config.json'}: text_config.model_type = {text_type!r}; supported Qwen-VL "
                f"families: {sorted(HF_QWENVL_ADAPTERS)}"
            )
        return HF_QWENVL_ADAPTERS[text_type]
    archs = (hf.get("llm_config") or {}).get("architectures") or []
    adapters = [HF_LLM_ADAPTERS[a] for a in archs if a in HF_LLM_ADAPTERS]
    if not adapters:
        raise ValueError(
            f"{folder / 'config.json'}: llm_config.architectures = {archs!r}; "
            f"supported: {sorted(HF_LLM_ADAPTERS)}"
        )
    return adapters[0]


def resolve_template(template: dict | str, where: str = "Sa2VAProcessor") -> dict:
    """A chat template dict from a dict or an xtuner ``PROMPT_TEMPLATE`` name (needs ``INSTRUCTION``)."""
    if isinstance(template, str):
        if template not in PROMPT_TEMPLATE:
            raise KeyError(
                f"{where}: unknown chat template {template!r} (xtuner PROMPT_TEMPLATE has no such entry)"
            )
        template = PROMPT_TEMPLATE[template]
    if not isinstance(template, dict):
        raise TypeError(
            f"{where}: template must be a dict or a PROMPT_TEMPLATE name, got {type(template).__name__}"
        )
    template = dict(template)
    if "INSTRUCTION" not in template:
        raise ValueError(f"{where}: chat template has no 'INSTRUCTION' entry: {template!r}")
    return template


class Sa2VAProcessor:
    """Tokenizer, chat template, MLLM image processor and SAM2 input of one Sa2VA model.

    Args:
        tokenizer: tokenizer object or config dict; Sa2VA's special tokens (and the InternVL image tokens
            when the image processor uses them) are added if missing, in the order the model adds them.
        template: xtuner chat template dict, or its ``PROMPT_TEMPLATE`` name.
        image_processor: :class:`InternVLImageProcessor` or :class:`QwenVLImageProcessor` (or a config
            dict of one): anything with ``preprocess(image, normalize=) -> VisionInputs``,
            ``num_slots(width, height)``, ``image_tokens``, ``num_image_token`` and ``internvl_tokens``.
        sam2_size: SAM2 input side (1024 for the released SAM2 encoders).
        sam2_resample: how the image is resized to it: ``'pil_bicubic'`` (the reference's PIL resize;
            integer values, so they can travel as uint8) or ``'bilinear'`` (float only).

    Attributes:
        pad_token_id: the tokenizer's pad id, else its eos id.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        template: dict | str,
        image_processor: Any,
        sam2_size: int = 1024,
        sam2_resample: Literal["pil_bicubic", "bilinear"] = "pil_bicubic",
    ) -> None:
        self.image_processor = build_component(image_processor)
        if self.image_processor is None:
            raise ValueError(
                "Sa2VAProcessor needs an image_processor (InternVLImageProcessor or QwenVLImageProcessor)"
            )
        self.tokenizer = build_component(tokenizer)
        if self.tokenizer is None:
            raise ValueError("Sa2VAProcessor needs a tokenizer")
        add_sa2va_tokens(self.tokenizer, internvl_tokens=bool(self.image_processor.internvl_tokens))
        self.template = resolve_template(template)
        if sam2_size < 1:
            raise ValueError(f"sam2_size must be >= 1, got {sam2_size}")
        if sam2_resample not in ("pil_bicubic", "bilinear"):
            raise ValueError(f"sam2_resample must be 'pil_bicubic' or 'bilinear', got {sam2_resample!r}")
        self.sam2_size = int(sam2_size)
        self.sam2_resample = sam2_resample
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError(f"{type(tok).__name__} has neither a pad nor an eos token")
        self.pad_token_id = int(pad)
        self.image_token_ids = tuple(
            int(tok.convert_tokens_to_ids(t)) for t in self.image_processor.image_tokens
        )
        self._prefix_ids = prefix_ids(tok)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}, "
            f"image_processor={self.image_processor!r}, sam2_size={self.sam2_size}, "
            f"sam2_resample={self.sam2_resample!r})"
        )

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        template: dict | str | None = None,
        min_tiles: int | None = None,
        max_tiles: int | None = None,
        use_thumbnail: bool | None = None,
        min_pixels: int = SA2VA_MIN_PIXELS,
        max_pixels: int = SA2VA_MAX_PIXELS,
        sam2_size: int = 1024,
        sam2_resample: Literal["pil_bicubic", "bilinear"] = "pil_bicubic",
    ) -> Sa2VAProcessor:
        """The processor of a Hugging Face Sa2VA folder (official layout, or one ``convert_to_hf`` wrote).

        The family comes from ``config.json`` (:func:`hf_adapter`); the tokenizer from the folder
        (:func:`~projects.sa2va.models.tokenizer.load_tokenizer`, no remote code); the template from
        ``config.json``'s ``template``, else the family's. InternVL layout: tiles of
        ``vision_config.image_size`` px, ``num_image_token`` from its ``patch_size`` and
        ``downsample_ratio``, tiling from ``min_dynamic_patch`` / ``max_dynamic_patch`` /
        ``use_thumbnail`` (official defaults 1 / 12 / True where absent); ``force_image_size`` wins over
        ``vision_config.image_size`` when set, as in InternVL. Qwen-VL layout: the folder's
        ``preprocessor_config.json`` at the ``min_pixels`` / ``max_pixels`` budget (Sa2VA's by default).

        Args:
            path: the folder.
            template / min_tiles / max_tiles / use_thumbnail: override the folder's values.
            min_pixels / max_pixels: Qwen-VL pixel budget (ignored for InternVL).
            sam2_size / sam2_resample: SAM2 input (the folder does not record them).
        """
        path = Path(path)
        hf = read_hf_config(path)
        adapter = hf_adapter(path, hf)
        if issubclass(adapter, QwenVLMLLM):
            image_processor: Any = QwenVLImageProcessor(
                path=path, min_pixels=min_pixels, max_pixels=max_pixels
            )
        else:
            vision = hf["vision_config"]

            def pick(given: Any, key: str, default: Any) -> Any:
                return given if given is not None else hf.get(key, default)

            image_processor = InternVLImageProcessor(
                tile_size=int(hf.get("force_image_size") or vision["image_size"]),  # InternVL's rule
                patch_size=int(vision["patch_size"]),
                downsample_ratio=float(hf.get("downsample_ratio", 0.5)),
                min_tiles=int(pick(min_tiles, "min_dynamic_patch", 1)),
                max_tiles=int(pick(max_tiles, "max_dynamic_patch", 12)),
                use_thumbnail=bool(pick(use_thumbnail, "use_thumbnail", True)),
            )
        if template is None:
            template = hf.get("template") or adapter.family.default_template
        return cls(
            tokenizer=load_tokenizer(path),
            template=template,
            image_processor=image_processor,
            sam2_size=sam2_size,
            sam2_resample=sam2_resample,
        )

    # --- image -----------------------------------------------------------------------------------
    @property
    def num_image_token(self) -> int:
        """Image-slot tokens per MLLM image row unit: per InternVL tile (256 at 448 px), 1 for Qwen-VL."""
        return int(self.image_processor.num_image_token)

    def image_inputs(self, image: Image.Image, *, normalize: bool = True) -> VisionInputs:
        """The MLLM input of one RGB image (see :class:`VisionInputs`)."""
        return self.image_processor.preprocess(image, normalize=normalize)

    def num_slots(self, width: int, height: int) -> int:
        """Image-slot tokens a ``width x height`` image takes in the prompt (no decoding)."""
        return int(self.image_processor.num_slots(width, height))

    def sam2_inputs(
        self,
        image: np.ndarray | Image.Image,
        *,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> torch.Tensor:
        """SAM2 input ``[3, G, G]`` (``G = sam2_size``) of an RGB ``[H, W, 3]`` uint8 image.

        float32 ``(x / 255 - mean) / std`` (training: the exact ImageNet constants; the official
        inference: their bf16 roundings), or with ``normalize=False`` the uint8 pixels (needs
        ``sam2_resample='pil_bicubic'``), normalised on the device by the model.
        """
        return sam2_pixel_values(
            image, size=self.sam2_size, mean=mean, std=std, resample=self.sam2_resample, normalize=normalize
        )

    # --- text ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    @property
    def prefix_ids(self) -> list[int]:
        """What the tokenizer puts before a text (``[bos]`` for InternLM2, ``[]`` for Qwen2)."""
        return list(self._prefix_ids)

    def encode_with_image(self, text: str, slots: int) -> list[int]:
        """Encode ``text``, its single ``<image>`` (if any) -> ``start + slot * slots + end`` ids."""
        return encode_with_image(
            self.tokenizer,
            text,
            num_tiles=slots,
            num_image_token=1,
            image_tokens=self.image_processor.image_tokens,
        )

    def prompt_ids(self, question: str, slots: int) -> list[int]:
        """Ids of a first user turn, up to where the assistant answer starts (the inference prompt).

        ``<image>\\n`` is prepended to ``question`` unless it holds ``<image>``; starts with the
        tokenizer's BOS where it has one, as the official ``predict_forward`` and training do.
        """
        text = instruction_text(self.template, image_question(question))
        return self.prefix_ids + self.encode_with_image(text, slots)

    def system_ids(self, system: str | None) -> list[int]:
        """Ids before the first turn: the tokenizer's BOS (none for Qwen2), then the system prompt."""
        ids = self.encode(self.template["SYSTEM"].format(system=system)) if system else []
        return self.prefix_ids + ids

    def turn_ids(self, question: str, answer: str, *, first: bool, slots: int) -> tuple[list[int], ...]:
        """``(question ids, answer ids, separator ids)`` of one training turn (xtuner's tokenisation).

        The first turn's question gets ``<image>\\n`` (expanded to ``slots`` image tokens). Templates
        without ``SUFFIX_AS_EOS`` put BOS before every later turn and the eos after each answer.
        """
        t = self.template
        if first:
            question = image_question(question)
        q_ids = self.encode_with_image(instruction_text(t, question), slots)
        a_ids = self.encode(answer + t.get("SUFFIX", ""))
        if not t.get("SUFFIX_AS_EOS", False):
            q_ids = q_ids if first else self.prefix_ids + q_ids
            a_ids = [*a_ids, self.tokenizer.eos_token_id]
        return q_ids, a_ids, self.encode(t.get("SEP", ""))
