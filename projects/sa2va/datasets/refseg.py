"""Referring-segmentation dataset over an ``annotations.json`` (polygons and/or RLE per object).

Each item is one image with exactly ``objects_per_image`` (text, mask) pairs (random subset if the
record has more, cyclic repeat if fewer; all of them in order when ``None``), written as a
multi-turn conversation in the LLM's chat template::

    <|im_start|>user\\n<img><IMG_CONTEXT>*256*tiles</img>\\nPlease segment the blood vessel.<|im_end|>\\n
    <|im_start|>assistant\\nSure, [SEG].<|im_end|>\\n<|im_start|>user\\n...

Labels are ``-100`` except the assistant answers and their end token. Randomness (object subset,
question/answer wording, augmentation) is a pure function of ``(seed, index)``, so a resumed run
sees exactly the samples of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..models.builder import build_component
from ..models.tokenizer import add_sa2va_tokens
from .annotations import decode_record_masks, load_annotations
from .image_processing import (
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    dynamic_tiles,
    internvl_pixel_values,
    sam2_pixel_values,
)
from .prompt import IMAGE_PLACEHOLDER, image_question, instruction_text  # noqa: F401 (re-export)
from .prompt import encode_with_image as _encode_with_image

QUESTION_TEMPLATES: tuple[str, ...] = (
    "Please segment the {text}.",
    "Can you segment the {text} in this image?",
    "Please segment the {text} in this image.",
    "What is the {text} in this image? Please respond with a segmentation mask.",
    "Could you give the segmentation mask of the {text}?",
)
ANSWER_TEMPLATES: tuple[str, ...] = (
    "Sure, [SEG].",
    "It is [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)


class RefSegDataset(Dataset):
    """Images + referring expressions + masks -> token ids, image tensors and target masks.

    Args:
        ann_file: ``annotations.json`` (list of ``{"image", "text", "mask"}`` records).
        image_root: folder the records' ``image`` paths are relative to.
        tokenizer: tokenizer object or config dict (Sa2VA's special tokens are added if missing).
        template: chat template dict (``xtuner.utils.PROMPT_TEMPLATE.qwen_chat`` etc.).
        objects_per_image: (text, mask) pairs per sample (5 in the reference); ``None`` = all, in order.
        repeats: how many times the records are repeated per epoch.
        question_templates / answer_templates: wordings (``{text}`` placeholder; answer holds ``[SEG]``).
        random_templates: pick wordings at random (training) or always the first (evaluation).
        system: optional system prompt.
        tile_size: InternViT input size (448); ``min_tiles`` / ``max_tiles`` / ``use_thumbnail``:
            InternVL dynamic tiling.
        num_image_token: LLM tokens per tile (256 = (448/14)^2 / 4).
        sam2_image_size: SAM2 input side (1024).
        sam2_resample: how the image is resized to it: ``'pil_bicubic'`` (the reference's PIL resize)
            or ``'bilinear'``.
        max_length: a longer sequence is an error (never silently truncated: it would lose [SEG]s).
        augment: optional :class:`~projects.sa2va.datasets.augment.SegAugment` (or config dict).
        seed: base seed of every random choice.
        check_images: open every image at start-up to validate sizes (see ``load_annotations``).
    """

    def __init__(
        self,
        *,
        ann_file: str,
        image_root: str,
        tokenizer: Any,
        template: dict,
        objects_per_image: int | None = 5,
        repeats: int = 1,
        question_templates: tuple[str, ...] | list[str] = QUESTION_TEMPLATES,
        answer_templates: tuple[str, ...] | list[str] = ANSWER_TEMPLATES,
        random_templates: bool = True,
        system: str | None = None,
        tile_size: int = 448,
        min_tiles: int = 1,
        max_tiles: int = 12,
        use_thumbnail: bool = True,
        num_image_token: int = 256,
        sam2_image_size: int = 1024,
        sam2_resample: str = "pil_bicubic",
        max_length: int = 8192,
        augment: Any = None,
        seed: int = 0,
        check_images: bool = True,
    ) -> None:
        super().__init__()
        if objects_per_image is not None and objects_per_image < 1:
            raise ValueError(f"objects_per_image must be >= 1 or None, got {objects_per_image}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        for q in question_templates:
            if "{text}" not in q:
                raise ValueError(f"question template {q!r} has no {{text}} placeholder")
        for a in answer_templates:
            if a.count("[SEG]") != 1:
                raise ValueError(f"answer template {a!r} must contain exactly one [SEG]")
        self.ann_file = str(ann_file)
        self.image_root = Path(image_root)
        self.records = load_annotations(ann_file, image_root, check_images=check_images)
        if not self.records:
            raise ValueError(f"{ann_file}: no records")
        self.tokenizer = build_component(tokenizer)
        add_sa2va_tokens(self.tokenizer)
        self.template = dict(template)
        self.objects_per_image = objects_per_image
        self.repeats = repeats
        self.question_templates = tuple(question_templates)
        self.answer_templates = tuple(answer_templates)
        self.random_templates = random_templates
        self.system = system
        self.tile_size = tile_size
        self.min_tiles = min_tiles
        self.max_tiles = max_tiles
        self.use_thumbnail = use_thumbnail
        self.num_image_token = num_image_token
        self.sam2_image_size = sam2_image_size
        self.sam2_resample = sam2_resample
        self.max_length = max_length
        self.augment = build_component(augment)
        self.seed = seed
        tok = self.tokenizer
        self.img_start_id = tok.convert_tokens_to_ids(IMG_START_TOKEN)
        self.img_end_id = tok.convert_tokens_to_ids(IMG_END_TOKEN)
        self.img_context_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        self.pad_token_id = int(pad)

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    # --- pieces ----------------------------------------------------------------------------------
    def record(self, index: int) -> dict:
        return self.records[index % len(self.records)]

    def choose_objects(self, n: int, rng: np.random.Generator) -> list[int]:
        """Indices of the objects used for one sample (see class docstring)."""
        k = self.objects_per_image
        if k is None:
            return list(range(n))
        if n >= k:
            return [int(i) for i in rng.permutation(n)[:k]]
        start = [int(i) for i in rng.permutation(n)]
        return [start[i % n] for i in range(k)]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_with_image(self, text: str, num_tiles: int) -> list[int]:
        """Encode ``text``, replacing the single ``<image>`` by ``<img><IMG_CONTEXT>*n</img>`` ids."""
        return _encode_with_image(
            self.tokenizer, text, num_tiles=num_tiles, num_image_token=self.num_image_token
        )

    def build_conversation(
        self, texts: list[str], num_tiles: int, rng: np.random.Generator
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of the whole multi-turn conversation."""
        t = self.template
        input_ids: list[int] = []
        labels: list[int] = []
        if self.system:
            sys_ids = self.encode(t["SYSTEM"].format(system=self.system))
            input_ids += sys_ids
            labels += [-100] * len(sys_ids)
        for turn, text in enumerate(texts):
            qi = int(rng.integers(len(self.question_templates))) if self.random_templates else 0
            ai = int(rng.integers(len(self.answer_templates))) if self.random_templates else 0
            question = self.question_templates[qi].format(text=text)
            if turn == 0:
                question = image_question(question)
            q_ids = self.encode_with_image(instruction_text(t, question), num_tiles)
            a_ids = self.encode(self.answer_templates[ai] + t.get("SUFFIX", ""))
            sep_ids = self.encode(t.get("SEP", ""))
            input_ids += q_ids + a_ids + sep_ids
            labels += [-100] * len(q_ids) + a_ids + [-100] * len(sep_ids)
        return input_ids, labels

    def load_image(self, record: dict, index: int) -> Image.Image:
        path = self.image_root / record["image"]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise OSError(
                f"{self.ann_file}: record {index % len(self.records)}: cannot read image {path}: {e}"
            ) from e

    # --- item ------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        rec_idx = index % len(self.records)
        rec = self.records[rec_idx]
        rng = np.random.default_rng([self.seed, index])
        image = self.load_image(rec, index)
        w, h = image.size
        masks = decode_record_masks(rec, h, w)  # [N, H, W] bool
        if self.augment is not None:
            arr, masks = self.augment(np.asarray(image), masks, rng)
            image = Image.fromarray(arr)
            h, w = arr.shape[:2]
        chosen = self.choose_objects(masks.shape[0], rng)
        texts = [rec["text"][i] for i in chosen]
        tiles = dynamic_tiles(
            image,
            min_num=self.min_tiles,
            max_num=self.max_tiles,
            tile_size=self.tile_size,
            use_thumbnail=self.use_thumbnail,
        )
        input_ids, labels = self.build_conversation(texts, len(tiles), rng)
        if len(input_ids) > self.max_length:
            raise ValueError(
                f"{self.ann_file}: record {rec_idx} ({rec['image']}): {len(input_ids)} tokens > "
                f"max_length={self.max_length}; raise max_length or lower max_tiles/objects_per_image"
            )
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": internvl_pixel_values(tiles),
            "g_pixel_values": sam2_pixel_values(
                np.asarray(image), size=self.sam2_image_size, resample=self.sam2_resample
            ),
            "masks": torch.from_numpy(masks[chosen].astype(np.uint8)),
            "image_id": str(rec["image"]),
            "texts": texts,
            "pad_token_id": self.pad_token_id,
        }
