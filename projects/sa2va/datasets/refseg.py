"""Referring-segmentation dataset over an ``annotations.json`` (polygons and/or RLE per object).

Each item is one image with exactly ``objects_per_image`` turns (random subset if the record has
more, cyclic repeat if fewer; all of them in order when ``None``), written as a multi-turn
conversation in the LLM's chat template::

    <|im_start|>user\\n<img><IMG_CONTEXT>*256*tiles</img>\\nPlease segment the blood vessel.<|im_end|>\\n
    <|im_start|>assistant\\nSure, [SEG].<|im_end|>\\n<|im_start|>user\\n...

A turn is one object (one ``[SEG]`` in its answer) unless the record's ``"turns"`` asks for several
objects together (:func:`~.annotations.record_turns`): then the question names them all and the answer
holds one ``[SEG]`` per object, in the turn's order, e.g. ::

    Please segment the optic disc and blood vessel.
    Sure, the optic disc is [SEG] and the blood vessel is [SEG].

(the joined answer of the official Sa2VA multi-target data,
``sa2va_eval/projects/ST/dataset/MUSE_Dataset.py``: ``"{class_name} is [SEG]"`` phrases joined by
``", "`` and ``" and "``). The item's masks are the objects of its turns in that order, one per ``[SEG]``.

Labels are ``-100`` except the assistant answers and their end token. Randomness (object subset,
question/answer wording, augmentation) is a pure function of ``(seed, index)``, so a resumed run
sees exactly the samples of an uninterrupted one. The object subset and the wording are the first
draws of that generator (:meth:`RefSegDataset.sample_plan`), so the token count of every sample is
known without decoding its image or masks (:attr:`RefSegDataset.lengths`, for length-grouped batches).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..models.builder import build_component
from .annotations import decode_record_masks, load_annotations, record_turns
from .image_io import read_image, read_image_size
from .processor import Sa2VAProcessor
from .prompt import IMAGE_PLACEHOLDER, image_question, instruction_text, prefix_ids  # noqa: F401 (re-export)

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
#: Answers of a turn asking for several objects: ``{objects}`` is the objects' phrases joined by
#: :func:`join_texts`; each phrase is an :data:`OBJECT_ANSWER_TEMPLATES` entry (one ``[SEG]``).
MULTI_ANSWER_TEMPLATES: tuple[str, ...] = (
    "Sure, {objects}.",
    "{objects}.",
)
OBJECT_ANSWER_TEMPLATES: tuple[str, ...] = (
    "the {text} is [SEG]",
    "the segmentation result of the {text} is [SEG]",
    "[SEG]",
)

#: A turn of a sample: one object index, or a tuple of object indices asked for together.
TurnObjects = int | tuple[int, ...]
#: A turn's wording: ``(question, answer)`` template indices; ``(question, multi answer, object
#: answer)`` for a turn of several objects.
Wording = tuple[int, ...]


def answer_object_texts(
    answer: str, object_answer_templates: tuple[str, ...] | list[str] = OBJECT_ANSWER_TEMPLATES
) -> list[str | None]:
    """The object text each ``[SEG]`` of an answer names, in order (None where the answer names none).

    Reads answers in the wording of :data:`OBJECT_ANSWER_TEMPLATES` (``"Sure, the optic disc is [SEG]
    and the blood vessel is [SEG]."`` -> ``["optic disc", "blood vessel"]``); a bare ``[SEG]`` (``"Sure,
    [SEG]."``) gives None. For naming predicted masks; the masks themselves come one per ``[SEG]``.
    """
    patterns = []
    for template in sorted(object_answer_templates, key=len, reverse=True):
        before = template.split("[SEG]", 1)[0]
        if "{text}" not in before:
            continue
        head, tail = before.split("{text}", 1)
        patterns.append(re.compile(re.escape(head) + r"(?P<text>.+?)" + re.escape(tail) + r"$"))
    chunks = answer.split("[SEG]")[:-1]
    out: list[str | None] = []
    for chunk in chunks:
        found = None
        for pattern in patterns:
            match = pattern.search(chunk)
            if match:
                found = match.group("text").strip()
                break
        out.append(found)
    return out


def join_texts(texts: list[str] | tuple[str, ...]) -> str:
    """``["a"]`` -> ``"a"``; ``["a", "b"]`` -> ``"a and b"``; ``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if not texts:
        raise ValueError("no texts to join")
    if len(texts) == 1:
        return texts[0]
    return ", ".join(texts[:-1]) + " and " + texts[-1]


class RefSegDataset(Dataset):
    """Images + referring expressions + masks -> token ids, image tensors and target masks.

    Args:
        ann_file: ``annotations.json`` (list of ``{"image", "text", "mask"}`` records).
        image_root: folder the records' ``image`` paths are relative to.
        processor: the model's :class:`~.processor.Sa2VAProcessor` (or its config dict): tokenizer,
            chat template, MLLM image processor (InternVL tiling or the Qwen-VL processor), SAM2 input.
        objects_per_image: turns per sample (5 in the reference); a turn is one (text, mask) pair, or
            several objects asked for together (the record's ``"turns"``); ``None`` = all, in order.
        repeats: how many times the records are repeated per epoch.
        question_templates / answer_templates: wordings (``{text}`` placeholder; answer holds ``[SEG]``).
            A question of several objects gets their texts joined (:func:`join_texts`) as ``{text}``.
        multi_answer_templates / object_answer_templates: answers of a turn of several objects
            (``{objects}`` placeholder; per object ``{text}`` and one ``[SEG]``).
        random_templates: pick wordings at random (training) or always the first (evaluation).
        system: optional system prompt.
        pixel_format: ``'uint8'`` (default): ``pixel_values`` / ``g_pixel_values`` are the uint8 pixels,
            normalised on the device by the model (4x fewer bytes through the workers, shared and
            pinned memory; the normalised values are bit-identical); ``'float32'``: normalised here
            (needed for the processor's ``sam2_resample='bilinear'``, whose values are not integers).
            Qwen-VL patches are always float32 (the Hugging Face processor normalises them).
        max_length: a longer sequence is an error (never silently truncated: it would lose [SEG]s).
        augment: optional :class:`~projects.sa2va.datasets.augment.SegAugment` (or config dict).
        seed: base seed of every random choice.
        check_images: open every image at start-up to validate sizes (see ``load_annotations``).
        allow_outside_root: accept image paths outside ``image_root`` (absolute, or ``..`` above it);
            refused by record index otherwise (see ``load_annotations``).
    """

    def __init__(
        self,
        *,
        ann_file: str,
        image_root: str,
        processor: Sa2VAProcessor | dict,
        objects_per_image: int | None = 5,
        repeats: int = 1,
        question_templates: tuple[str, ...] | list[str] = QUESTION_TEMPLATES,
        answer_templates: tuple[str, ...] | list[str] = ANSWER_TEMPLATES,
        multi_answer_templates: tuple[str, ...] | list[str] = MULTI_ANSWER_TEMPLATES,
        object_answer_templates: tuple[str, ...] | list[str] = OBJECT_ANSWER_TEMPLATES,
        random_templates: bool = True,
        system: str | None = None,
        pixel_format: str = "uint8",
        max_length: int = 8192,
        augment: Any = None,
        seed: int = 0,
        check_images: bool = True,
        allow_outside_root: bool = False,
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
        if not multi_answer_templates or not object_answer_templates:
            raise ValueError("multi_answer_templates and object_answer_templates must not be empty")
        for a in multi_answer_templates:
            if a.count("{objects}") != 1 or "[SEG]" in a:
                raise ValueError(
                    f"multi-object answer template {a!r} must contain {{objects}} once and no [SEG] "
                    "(each object's phrase brings its [SEG])"
                )
        for a in object_answer_templates:
            if a.count("[SEG]") != 1:
                raise ValueError(f"object answer template {a!r} must contain exactly one [SEG]")
        if pixel_format not in ("uint8", "float32"):
            raise ValueError(f"pixel_format must be 'uint8' or 'float32', got {pixel_format!r}")
        self.processor: Sa2VAProcessor = build_component(processor)
        if not isinstance(self.processor, Sa2VAProcessor):
            raise TypeError(
                f"{ann_file}: processor must be a Sa2VAProcessor, got {type(self.processor).__name__}"
            )
        if pixel_format == "uint8" and self.processor.sam2_resample != "pil_bicubic":
            raise ValueError(
                f"sam2_resample={self.processor.sam2_resample!r} gives non-integer SAM2 inputs: use "
                "pixel_format='float32' (or sam2_resample='pil_bicubic')"
            )
        self.ann_file = str(ann_file)
        self.image_root = Path(image_root)
        self.records = load_annotations(
            ann_file, image_root, check_images=check_images, allow_outside_root=allow_outside_root
        )
        if not self.records:
            raise ValueError(f"{ann_file}: no records")
        self.objects_per_image = objects_per_image
        self.repeats = repeats
        self.question_templates = tuple(question_templates)
        self.answer_templates = tuple(answer_templates)
        self.multi_answer_templates = tuple(multi_answer_templates)
        self.object_answer_templates = tuple(object_answer_templates)
        # Per record: its turns, a single-object turn as the plain object index (as without "turns").
        self.record_turn_objects: list[list[TurnObjects]] = [
            [t[0] if len(t) == 1 else t for t in record_turns(r)] for r in self.records
        ]
        self.random_templates = random_templates
        self.system = system
        self.pixel_format = pixel_format
        self.max_length = max_length
        self.augment = build_component(augment)
        self.seed = seed
        self.pad_token_id = self.processor.pad_token_id
        self._lengths: list[int] | None = None
        self._image_sizes: dict[str, tuple[int, int]] = {}
        self._turn_lengths: dict[tuple[str | tuple[str, ...], Wording, bool], int] = {}

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    # --- the processor's parts, read by tools and tests ------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def template(self) -> dict:
        return self.processor.template

    @property
    def num_image_token(self) -> int:
        """Image-slot tokens per InternVL tile (1 for Qwen-VL, whose slots are counted directly)."""
        return self.processor.num_image_token

    @property
    def sam2_image_size(self) -> int:
        return self.processor.sam2_size

    # --- pieces ----------------------------------------------------------------------------------
    def record(self, index: int) -> dict:
        return self.records[index % len(self.records)]

    def choose_objects(self, n: int, rng: np.random.Generator) -> list[int]:
        """Indices of the turns (objects, for records without ``"turns"``) of one sample (class docstring)."""
        k = self.objects_per_image
        if k is None:
            return list(range(n))
        if n >= k:
            return [int(i) for i in rng.permutation(n)[:k]]
        start = [int(i) for i in rng.permutation(n)]
        return [start[i % n] for i in range(k)]

    def choose_wording(self, rng: np.random.Generator, multi: bool = False) -> Wording:
        """Template indices of one turn: ``(question, answer)``, or for a turn of several objects
        (``multi``) ``(question, multi answer, object answer)``; all 0 without random templates."""
        if not self.random_templates:
            return (0, 0, 0) if multi else (0, 0)
        qi = int(rng.integers(len(self.question_templates)))
        if not multi:
            return qi, int(rng.integers(len(self.answer_templates)))
        ai = int(rng.integers(len(self.multi_answer_templates)))
        return qi, ai, int(rng.integers(len(self.object_answer_templates)))

    def sample_plan(self, index: int) -> tuple[list[TurnObjects], list[Wording], np.random.Generator]:
        """What sample ``index`` is made of, without reading its image.

        Returns:
            ``(objects, wording, rng)``: per turn, the record's object index (a tuple of indices for a
            turn asking for several objects), the template indices per turn (:meth:`choose_wording`),
            and the sample's generator after these draws (the augmentation draws from it next).
            Records without ``"turns"`` draw exactly what they drew before turns existed.
        """
        rng = np.random.default_rng([self.seed, index])
        turns = self.record_turn_objects[index % len(self.records)]
        objects = [turns[i] for i in self.choose_objects(len(turns), rng)]
        wording = [self.choose_wording(rng, multi=isinstance(o, tuple)) for o in objects]
        return objects, wording, rng

    @staticmethod
    def turn_texts(record: dict, objects: list[TurnObjects]) -> list[str | tuple[str, ...]]:
        """Per turn, the object's text, or the tuple of texts of a turn of several objects."""
        texts = record["text"]
        return [texts[o] if isinstance(o, int) else tuple(texts[i] for i in o) for o in objects]

    @staticmethod
    def flat_objects(objects: list[TurnObjects]) -> list[int]:
        """Object indices in ``[SEG]`` order (one per mask of the sample)."""
        return [i for o in objects for i in ((o,) if isinstance(o, int) else o)]

    def _system_ids(self) -> list[int]:
        """Ids before the first turn: the tokenizer's BOS (``[]`` for Qwen2), then the system prompt."""
        return self.processor.system_ids(self.system)

    def turn_text(self, text: str | tuple[str, ...], wording: Wording) -> tuple[str, str]:
        """``(question, answer)`` strings of one turn: ``text`` is one object's text, or the texts of a
        turn of several objects (answer with one ``[SEG]`` per text, in order)."""
        if isinstance(text, str):
            qi, ai = wording[:2]
            return self.question_templates[qi].format(text=text), self.answer_templates[ai]
        texts = tuple(text)
        if len(wording) != 3:
            raise ValueError(f"a turn of several objects {texts} needs a 3-index wording, got {wording}")
        qi, ai, oi = wording
        phrases = [self.object_answer_templates[oi].format(text=t) for t in texts]
        answer = self.multi_answer_templates[ai].format(objects=join_texts(phrases))
        return self.question_templates[qi].format(text=join_texts(texts)), answer

    def _turn_ids(
        self, text: str | tuple[str, ...], wording: Wording, first: bool, slots: int
    ) -> tuple[list[int], ...]:
        """``(question ids, answer ids, separator ids)`` of one turn (:meth:`Sa2VAProcessor.turn_ids`)."""
        question, answer = self.turn_text(text, wording)
        return self.processor.turn_ids(question, answer, first=first, slots=slots)

    def conversation(
        self, texts: list[str | tuple[str, ...]], wording: list[Wording], slots: int
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of the conversation with the given wording per turn.

        Args:
            texts: per turn, the object's text, or a tuple of texts (a turn of several objects).
            wording: per turn, :meth:`choose_wording`'s template indices.
            slots: image-slot tokens of the image (``<IMG_CONTEXT>`` / ``<|image_pad|>``), in the first turn.
        """
        input_ids = self._system_ids()
        labels = [-100] * len(input_ids)
        for turn, (text, words) in enumerate(zip(texts, wording, strict=True)):
            q_ids, a_ids, sep_ids = self._turn_ids(text, tuple(words), turn == 0, slots)
            input_ids += q_ids + a_ids + sep_ids
            labels += [-100] * len(q_ids) + a_ids + [-100] * len(sep_ids)
        return input_ids, labels

    # --- lengths without decoding -----------------------------------------------------------------
    def image_slots(self, index: int) -> int:
        """Image-slot tokens of sample ``index``'s image, from its size (the header only; augmentation
        keeps the size)."""
        rec = self.record(index)
        name = str(rec["image"])
        if name not in self._image_sizes:
            path = self.image_root / name
            try:
                self._image_sizes[name] = read_image_size(path)  # upright, as load_image returns it
            except (OSError, ValueError) as e:
                raise OSError(f"{self.ann_file}: cannot read the size of image {path}: {e}") from e
        width, height = self._image_sizes[name]
        return self.processor.num_slots(width, height)

    def _turn_length(self, text: str | tuple[str, ...], wording: Wording, first: bool) -> int:
        """Tokens of one turn without the image-slot tokens (cached per wording and text)."""
        key = (text, tuple(wording), first)
        if key not in self._turn_lengths:
            parts = self._turn_ids(text, tuple(wording), first, 1)
            self._turn_lengths[key] = sum(map(len, parts)) - (1 if first else 0)
        return self._turn_lengths[key]

    def sample_length(self, index: int) -> int:
        """``len(self[index]['input_ids'])``, exactly, without reading the image data or the masks."""
        objects, wording, _ = self.sample_plan(index)
        texts = self.turn_texts(self.record(index), objects)
        n = self._system_length + self.image_slots(index)
        for turn, (text, words) in enumerate(zip(texts, wording)):
            n += self._turn_length(text, words, turn == 0)
        return n

    @property
    def _system_length(self) -> int:
        return len(self._system_ids())

    @property
    def lengths(self) -> list[int]:
        """Token count of every sample (``len(self)`` entries), exact for fixed and random templates.

        Computed once, from the image sizes (headers) and the replayed object/wording draws of
        :meth:`sample_plan`; a record whose wording is fixed and whose objects give turns of equal
        length costs one computation for all its repeats. :class:`~.samplers.LengthGroupedSampler`
        reads it.
        """
        if self._lengths is None:
            per_record: dict[int, int] = {}
            out = []
            for index in range(len(self)):
                r = index % len(self.records)
                if r in per_record:
                    out.append(per_record[r])
                    continue
                length = self.sample_length(index)
                if self._length_is_per_record(r):
                    per_record[r] = length
                out.append(length)
            self._lengths = out
        return self._lengths

    def _length_is_per_record(self, r: int) -> bool:
        """Whether every repeat of record ``r`` has the same length (no random draw changes it)."""
        if self.random_templates:
            return False
        if self.objects_per_image is None:
            return True
        texts = self.turn_texts(self.records[r], self.record_turn_objects[r])
        fixed = [(0, 0) if isinstance(t, str) else (0, 0, 0) for t in texts]  # the only wording here
        return all(
            len({self._turn_length(t, w, first) for t, w in zip(texts, fixed)}) == 1
            for first in (True, False)
        )

    def load_image(self, record: dict, index: int) -> Image.Image:
        path = self.image_root / record["image"]
        try:
            return read_image(path)  # the toolkit's one rule (datasets/image_io.py)
        except (OSError, ValueError) as e:
            raise OSError(
                f"{self.ann_file}: record {index % len(self.records)}: cannot read image {path}: {e}"
            ) from e

    # --- item ------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        rec_idx = index % len(self.records)
        rec = self.records[rec_idx]
        chosen, wording, rng = self.sample_plan(index)
        image = self.load_image(rec, index)
        w, h = image.size
        masks = decode_record_masks(rec, h, w, validated=True)  # [N, H, W] bool; load_annotations checked it
        if masks.shape[0] != len(rec["text"]):
            raise ValueError(
                f"{self.ann_file}: record {rec_idx}: {masks.shape[0]} masks for {len(rec['text'])} texts"
            )
        if self.augment is not None:  # keeps the size H, W (so the tile count)
            arr, masks = self.augment(np.asarray(image), masks, rng)
            image = Image.fromarray(arr)
            h, w = arr.shape[:2]
        turn_texts = self.turn_texts(rec, chosen)
        flat = self.flat_objects(chosen)  # one per [SEG], in answer order
        texts = [rec["text"][i] for i in flat]
        normalize = self.pixel_format == "float32"
        vision = self.processor.image_inputs(image, normalize=normalize)
        input_ids, labels = self.conversation(turn_texts, wording, vision.slots)
        if len(input_ids) > self.max_length:
            raise ValueError(
                f"{self.ann_file}: record {rec_idx} ({rec['image']}): {len(input_ids)} tokens > "
                f"max_length={self.max_length}; raise max_length or lower the image processor's "
                "max_tiles / max_pixels or objects_per_image"
            )
        item = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": vision.pixel_values,
        }
        if vision.image_grid_thw is not None:  # Qwen-VL: pixel_values [P, D] patches of this grid
            item["image_grid_thw"] = vision.image_grid_thw
        item.update(
            g_pixel_values=self.processor.sam2_inputs(np.asarray(image), normalize=normalize),
            masks=torch.from_numpy(masks[flat].astype(np.uint8)),
            image_id=str(rec["image"]),
            texts=texts,
            pad_token_id=self.pad_token_id,
        )
        return item
