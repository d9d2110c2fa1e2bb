"""Sa2VA inference: greedy generation, then one mask per generated ``[SEG]``.

:class:`Sa2VAPredictor` wraps a built :class:`~projects.sa2va.models.sa2va.Sa2VAModel` (eval mode, no
grad) and follows the official Hugging Face ``predict_forward``:

1. prompt = ``<image>\\n`` + question in the chat template's ``INSTRUCTION`` (no system prompt), with
   ``<image>`` -> ``<img>`` + ``<IMG_CONTEXT>`` * (tokens per tile * tiles) + ``</img>``, built by the
   model's :class:`~projects.sa2va.datasets.processor.Sa2VAProcessor`, the one
   :class:`~projects.sa2va.datasets.refseg.RefSegDataset` trains with;
2. the processor's image input (InternVL dynamic tiles, PIL bicubic; or the Qwen-VL patches) for the
   vision tower; the image resized (PIL bicubic, aspect not kept) to the SAM2 input size for SAM2;
3. greedy decoding from the prompt embeddings (image tokens written in), left-padded for a batch,
   stopping at the template's ``STOP_WORDS`` or eos;
4. the ``[SEG]`` embeddings are taken the way training takes them: one teacher-forced forward of the
   training model (:meth:`Sa2VAModel.forward_tensors`) over prompt + generated tokens, hidden state
   AT each ``[SEG]`` (after the final norm) -> ``text_hidden_fcs`` -> SAM2 mask decoder;
5. low-res logits -> probabilities at the original image size with
   :meth:`Sa2VAModel.logits_to_probs` (bilinear through the SAM2 input size, as the official code) ->
   ``probs > threshold``.

Large images and flip test-time augmentation (both off by default; :meth:`Sa2VAPredictor.predict`'s
``tiling`` / ``flip_tta``): the answer (text and ``[SEG]`` count) is always generated from the whole
image as above. With tiling (:mod:`projects.sa2va.tiling`) the masks of an image larger than the window
are then computed window by window: each ``window x window`` crop is preprocessed like a whole image (same
prompt), the same answer is teacher-forced over it (step 4), its probabilities are taken at the
crop's own size (step 5) and the windows are blended with raised-cosine weights into the full-size
map. With flip TTA every view (the whole image, or each window) is also predicted mirrored left-right
(the same answer teacher-forced), its probabilities mirrored back and averaged with the unflipped
ones at equal weight.

Step 4 equals what the official code does with ``generate``'s own hidden states: the hidden state of
a causal LM at a position depends only on the tokens up to it, and the official code reads, for each
generated ``[SEG]``, the last-layer state computed when that token was fed back in. The two differ only
by numerics (cached vs. full attention, left vs. right padding), and in one corner case: a ``[SEG]``
that is the very last generated token (``max_new_tokens`` reached) has no hidden state in
``generate``'s output, so the official code drops it, while here it still gets a mask.

SAM2 normalisation: the official inference normalises in bf16, i.e. with the bf16-rounded ImageNet
constants (:data:`SAM2_INFER_MEAN` / :data:`SAM2_INFER_STD`), even in an fp32 run;
``official_normalisation=True`` (default) does the same. Training (``RefSegDataset``) uses the exact
ImageNet constants; pass ``official_normalisation=False`` to match training instead.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image
from transformers import GenerationConfig

from ..checkpoint.hf_sa2va import read_toolkit_grounding_encoder
from ..datasets.image_io import to_rgb
from ..datasets.image_processing import IMAGENET_MEAN, IMAGENET_STD, SAM2_INFER_MEAN, SAM2_INFER_STD
from ..datasets.processor import HF_LLM_ADAPTERS, HF_QWENVL_ADAPTERS, Sa2VAProcessor, hf_adapter  # noqa: F401
from ..models.builder import build_component
from ..models.internvl import read_hf_config
from ..models.qwenvl import QwenVLMLLM
from ..models.sa2va import SEG_TOKEN, Sa2VAModel
from ..models.tokenizer import load_tokenizer
from ..structures import Sa2VABatch
from ..tiling import TilingOptions, Window, WindowBlender, iter_chunks

__all__ = [
    "HF_LLM_ADAPTERS",
    "HF_MODEL_CONFIG",
    "THRESHOLD_FILE",
    "Prediction",
    "Sa2VAPredictor",
    "load_threshold",
]

#: Default file name of a saved best threshold: ``{"threshold": t}``.
THRESHOLD_FILE = "best_threshold.json"

ImageLike = Image.Image | np.ndarray

#: Model config used by :meth:`Sa2VAPredictor.from_hf` (its weights come from the folder). The adapter
#: class is read from the folder (:data:`HF_LLM_ADAPTERS` / :data:`HF_QWENVL_ADAPTERS`, in
#: :mod:`projects.sa2va.datasets.processor`).
HF_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs/_base_/model_sa2va_qwen2.py"
#: Model config used by :meth:`Sa2VAPredictor.from_hf` for the Qwen-VL families.
HF_QWENVL_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs/_base_/model_sa2va_qwen3vl.py"
#: :class:`Sa2VAProcessor` tiling settings :meth:`Sa2VAPredictor.from_config` / ``from_hf`` take as overrides.
TILING_KEYS = ("min_tiles", "max_tiles", "use_thumbnail")


@dataclass
class Prediction:
    """Result for one image.

    Attributes:
        text: the generated answer, special tokens except ``[SEG]`` removed, stripped.
        probs: ``[n, H, W]`` float32 mask probabilities in ``[0, 1]`` at the original image size,
            one per generated ``[SEG]`` in order (``n`` may be 0).
        masks: ``[n, H, W]`` bool, ``probs > threshold``.
        threshold: the threshold used for ``masks``.
        token_ids: generated token ids up to and including the stop token (if one was generated).
        seg_embeds: ``[n, D]`` float32 language embeddings fed to SAM2 (``D`` = 256 for Hiera-L), of
            the whole-image pass.
        views: how many mask forwards ``probs`` is blended from: 1 for the whole image, the number of
            windows when tiled; twice that with flip TTA.
    """

    text: str
    probs: np.ndarray
    masks: np.ndarray
    threshold: float
    token_ids: list[int]
    seg_embeds: np.ndarray
    views: int = 1

    @property
    def num_masks(self) -> int:
        return int(self.probs.shape[0])


def load_threshold(path: str | Path) -> float:
    """Read a threshold from JSON: ``{"threshold": t}`` (or an evaluation ``report.json``'s
    ``{"best_threshold": t}``). ``t`` must be a number in ``[0, 1]``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"threshold file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"threshold file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not ({"threshold", "best_threshold"} & set(data)):
        raise ValueError(f"threshold file {path}: expected a JSON object with 'threshold', got {data!r}")
    value = data.get("threshold", data.get("best_threshold"))
    return _check_threshold(value, f"threshold file {path}")


def _check_threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def _as_rgb_array(image: ImageLike, index: int) -> np.ndarray:
    """PIL image (any mode) or ``[H, W, 3]`` uint8 array -> ``[H, W, 3]`` uint8 RGB array.

    A PIL image goes through the toolkit's one rule (:func:`~projects.sa2va.datasets.image_io.to_rgb`:
    EXIF orientation, 16-bit / float scaled, alpha dropped), as the training dataset reads files.
    """
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image, f"images[{index}]"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"images[{index}]: expected a PIL image or an [H, W, 3] uint8 array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


@dataclass
class _Prepared:
    """One preprocessed image: vision input (ViT tiles ``[T, 3, S, S]`` or Qwen-VL patches ``[P, D]`` with
    ``image_grid_thw [1, 3]``), SAM2 input ``[3, G, G]``, prompt ids."""

    pixel_values: torch.Tensor
    g_pixel_values: torch.Tensor
    prompt_ids: list[int]
    size: tuple[int, int]  # (H, W) of the original image
    image_grid_thw: torch.Tensor | None = None


class Sa2VAPredictor:
    """Generate answers and masks with a Sa2VA model (separate from the training forward).

    Args:
        model: a built :class:`Sa2VAModel` (its weights loaded); put in eval mode here.
        processor: the model's :class:`~projects.sa2va.datasets.processor.Sa2VAProcessor` (or its config
            dict): tokenizer, chat template, image processor (InternVL tiling or the Qwen-VL processor) and
            SAM2 input size; checked against the model (image tokens per tile, tile size, image-slot and
            ``[SEG]`` ids, SAM2 input side).
        threshold: default mask threshold (0.5 as the official code, or a tuned one).
        official_normalisation: SAM2 input normalised with the bf16-rounded ImageNet constants as the
            official predictor (True) or with the exact constants as training (False).
        device: where the model runs (it is moved there); ``None``: where its parameters are.
        autocast: run under ``torch.autocast`` in the model's low-precision dtype (bf16/fp16), as
            training does; ``None``: when any parameter is bf16/fp16 (frozen parts kept in bf16 next
            to fp32 trainable ones need it).
        tiling: default window-by-window prediction of large images
            (:class:`~projects.sa2va.tiling.TilingOptions`, its dict, or a mode ``'off'`` / ``'on'`` /
            ``'auto'``; ``None``: off). The default window
            is the SAM2 input size.
        flip_tta: default for flip test-time augmentation (mean of the probabilities of the view and
            of its left-right mirror, mirrored back).
        window_batch_size: views (windows / flipped views) per teacher-forced forward.
    """

    def __init__(
        self,
        model: Sa2VAModel,
        *,
        processor: Sa2VAProcessor | dict,
        threshold: float = 0.5,
        official_normalisation: bool = True,
        device: str | torch.device | None = None,
        autocast: bool | None = None,
        tiling: TilingOptions | dict | str | None = None,
        flip_tta: bool = False,
        window_batch_size: int = 4,
    ) -> None:
        if not isinstance(model, Sa2VAModel):
            raise TypeError(f"Sa2VAPredictor needs a Sa2VAModel, got {type(model).__name__}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.processor: Sa2VAProcessor = build_component(processor)
        if not isinstance(self.processor, Sa2VAProcessor):
            raise TypeError(f"Sa2VAPredictor needs a Sa2VAProcessor, got {type(self.processor).__name__}")
        self.tokenizer = self.processor.tokenizer
        self.template = self.processor.template
        self.threshold = _check_threshold(threshold, "Sa2VAPredictor")
        self.official_normalisation = bool(official_normalisation)
        self.tiling = TilingOptions.parse(tiling)
        self.flip_tta = bool(flip_tta)
        if (
            isinstance(window_batch_size, bool)
            or not isinstance(window_batch_size, int)
            or window_batch_size < 1
        ):
            raise ValueError(f"window_batch_size must be a positive integer, got {window_batch_size!r}")
        self.window_batch_size = window_batch_size
        low = {p.dtype for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)}
        if len(low) > 1:
            raise ValueError(f"model mixes several low-precision dtypes {sorted(map(str, low))}")
        if autocast is None:
            autocast = bool(low)
        self.autocast_dtype: torch.dtype | None = (low.pop() if low else torch.bfloat16) if autocast else None
        self.image_processor = self.processor.image_processor
        self.num_image_token = self.processor.num_image_token
        self.sam2_size = self.processor.sam2_size
        self.seg_token_id = int(model.seg_token_idx)
        self._check_processor()
        tok = self.tokenizer
        self.pad_token_id = self.processor.pad_token_id
        self.stop_token_ids, self.stop_strings = self._stop_criteria()
        # Ids removed from the returned text: every special token except [SEG].
        self._strip_ids = set(tok.all_special_ids) - {self.seg_token_id}
        MMLogger.get_current_instance().info(
            f"Sa2VAPredictor: device {self.device}, {self.image_processor!r}, SAM2 {self.sam2_size} px with "
            f"{'official bf16-rounded' if self.official_normalisation else 'exact'} ImageNet constants, "
            f"threshold {self.threshold}, stop ids {self.stop_token_ids}, autocast {self.autocast_dtype}, "
            f"tiling {self.tiling.mode} (window {self.tiling.window_for(self.sam2_size)} px, overlap "
            f"{self.tiling.overlap}), flip TTA {self.flip_tta}"
        )

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config_path: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        cfg_options: dict | None = None,
        seed: int | None = None,
        threshold: float | None = None,
        threshold_file: str | Path | None = None,
        processor: Sa2VAProcessor | dict | None = None,
        **kwargs: Any,
    ) -> Sa2VAPredictor:
        """Build the model of an mmengine config, load a trainable-weights checkpoint, wrap it.

        Args:
            config_path: a Sa2VA config (its ``model`` is built with ``xtuner.registry.BUILDER``).
            checkpoint: an ``iter_N.pth`` of trainable tensors (``{'state_dict': ...}``), loaded
                strictly; ``None`` keeps the weights the config loads (e.g. an HF folder).
            device: where the model runs.
            cfg_options: overrides merged into the config (``Config.merge_from_dict``).
            seed: the seed to build with; ``None``: the one training built with (the checkpoint's
                recorded seed, else the config's ``randomness.seed``), so that parts no file holds
                (random-initialised frozen encoders) equal the trained model's
                (:func:`~projects.sa2va.engine.builder.build_model`).
            threshold / threshold_file: the default mask threshold, given or read from a JSON file
                (:func:`load_threshold`); at most one of them; neither: 0.5.
            processor: the :class:`Sa2VAProcessor` or its config dict; ``None``: the config's
                ``processor``, else its validation (test, training) dataset's. A config dict without
                ``sam2_size`` gets the built model's SAM2 input side.
            **kwargs: other :class:`Sa2VAPredictor` arguments, and ``min_tiles`` / ``max_tiles`` /
                ``use_thumbnail``, which override the processor config's InternVL tiling.
        """
        from ..engine.builder import build_model, load_config

        cfg = load_config(config_path, cfg_options)
        model = build_model(cfg, checkpoint, seed=seed)
        tiling = {k: kwargs.pop(k) for k in TILING_KEYS if kwargs.get(k) is not None}
        kwargs["processor"] = _processor_config(cfg, processor, tiling, model, config_path)
        kwargs["threshold"] = _pick_threshold(threshold, threshold_file)
        return cls(model, device=device, **kwargs)

    @classmethod
    def from_hf(
        cls,
        folder: str | Path,
        checkpoint: str | Path | None = None,
        *,
        model_config: str | Path | None = None,
        device: str | torch.device = "cpu",
        cfg_options: dict | None = None,
        **kwargs: Any,
    ) -> Sa2VAPredictor:
        """Build from an official-layout Hugging Face Sa2VA folder (e.g. one written by
        ``tools/convert_to_hf.py``), weights read by :class:`HFSa2VALoader` (no remote code).

        Args:
            folder: the HF folder (``config.json``, safetensors, tokenizer files).
            checkpoint: optional trainable-weights ``.pth`` loaded on top (LoRA etc.).
            model_config: the model config whose top-level ``path`` becomes ``folder`` (the config loader
                writes it into ``model.mllm.path``, ``model.load_weights.path`` and the other places of
                :data:`~projects.sa2va.engine.config_file.MODEL_FOLDER_FIELDS`; ``model.mllm.tokenizer``
                becomes :func:`~projects.sa2va.models.tokenizer.load_tokenizer` of ``folder``, which picks
                the tokenizer class by family without remote code); default :data:`HF_MODEL_CONFIG`. The
                InternVL adapter class is chosen from ``llm_config.architectures`` (:data:`HF_LLM_ADAPTERS`).
                A folder whose ``config.json`` has a ``sa2va_toolkit`` section (an export of a non-official
                SAM2 architecture, see ``checkpoint/hf_sa2va.py``) gets its ``config_name``, ``overrides``
                and ``upsampler`` in ``model.grounding_encoder``.
            device / cfg_options: as :meth:`from_config` (``cfg_options`` win over the above).
            **kwargs: as :meth:`from_config`; the processor is
                :meth:`Sa2VAProcessor.from_pretrained` of the folder (template and tiling from its
                ``config.json``; ``template``, ``min_tiles``, ``max_tiles``, ``use_thumbnail`` here
                override them).
        """
        folder = Path(folder)
        hf = read_hf_config(folder)
        adapter = hf_adapter(folder, hf)
        default_config = HF_QWENVL_MODEL_CONFIG if issubclass(adapter, QwenVLMLLM) else HF_MODEL_CONFIG
        overrides = {
            "path": str(folder),  # written into every place that reads the folder by `load_config`
            "model.mllm.type": adapter,
            "model.mllm.tokenizer": dict(_delete_=True, type=load_tokenizer),
        }
        # The language model in the folder's own precision (bfloat16 in the released folders; float32 in an
        # export of a float32 model such as the tiny demo).
        if hf.get("torch_dtype") in ("float32", "bfloat16", "float16"):
            overrides["model.mllm.torch_dtype"] = hf["torch_dtype"]
        overrides.update(cfg_options or {})
        processor = dict(type=Sa2VAProcessor.from_pretrained, path=str(folder))
        template = kwargs.pop("template", None)
        if template is not None:
            processor["template"] = template
        kwargs.setdefault("processor", processor)
        encoder = read_toolkit_grounding_encoder(folder, hf)
        if encoder is None:  # an official folder: the model config's SAM2 (Hiera-L)
            return cls.from_config(
                model_config or default_config, checkpoint, device=device, cfg_options=overrides, **kwargs
            )
        # A toolkit export of another SAM2 architecture (config.json `sa2va_toolkit` section): build exactly
        # that encoder; the strict weight loading then checks every tensor against it.
        from ..engine.builder import load_config

        overrides = {k: v for k, v in overrides.items() if k not in (cfg_options or {})}
        cfg = load_config(model_config or default_config, overrides)
        for key, value in encoder.items():
            cfg.model.grounding_encoder[key] = value
        return cls.from_config(cfg, checkpoint, device=device, cfg_options=cfg_options, **kwargs)

    def _check_processor(self) -> None:
        """Refuse a processor that does not fit the model (image tokens, tile size, ids, SAM2 side)."""
        mllm, p = self.model.mllm, self.processor
        where = f"Sa2VAPredictor: {p!r} does not fit {type(mllm).__name__}"
        if p.num_image_token != int(mllm.num_image_token):
            raise ValueError(
                f"{where}: {p.num_image_token} image tokens per tile, the model {mllm.num_image_token}"
            )
        vision = getattr(mllm, "vision_config", None)
        tile_size = getattr(p.image_processor, "tile_size", None)
        if (
            tile_size is not None
            and vision is not None
            and int(getattr(vision, "image_size", tile_size)) != tile_size
        ):
            raise ValueError(f"{where}: {tile_size} px tiles, the vision model takes {vision.image_size} px")
        slot_id = p.image_token_ids[1]
        if slot_id != int(mllm.img_context_token_id):
            raise ValueError(f"{where}: image-slot id {slot_id}, the model's {mllm.img_context_token_id}")
        seg = p.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        if seg != self.seg_token_id:
            raise ValueError(f"{where}: {SEG_TOKEN} id {seg}, the model's {self.seg_token_id}")
        sam2 = int(self.model.grounding_encoder.image_size)
        if p.sam2_size != sam2:
            raise ValueError(f"{where}: SAM2 input {p.sam2_size} px, the model's {sam2} px")

    def _stop_criteria(self) -> tuple[list[int], list[str]]:
        """Stop token ids (eos + single-token ``STOP_WORDS``) and multi-token stop strings."""
        tok = self.tokenizer
        ids: list[int] = [] if tok.eos_token_id is None else [int(tok.eos_token_id)]
        strings: list[str] = []
        for word in self.template.get("STOP_WORDS", []):
            enc = tok.encode(word, add_special_tokens=False)
            if len(enc) == 1:
                ids.append(int(enc[0]))
            elif enc:
                strings.append(word)
        if not ids and not strings:
            raise ValueError("no stop criterion: the tokenizer has no eos and the template no STOP_WORDS")
        return sorted(set(ids)), strings

    # --- preprocessing ---------------------------------------------------------------------------
    def build_prompt_ids(self, prompt: str, num_tiles: int) -> list[int]:
        """Token ids of the first user turn, up to where the assistant answer starts.

        ``<image>\\n`` is prepended to ``prompt`` unless it already holds ``<image>``. Starts with the
        tokenizer's BOS where it has one (InternLM2 ``<s>``; none for Qwen2), as the official
        ``predict_forward`` (``tokenizer.encode(prompt_text)``) and training do.
        """
        return self.processor.prompt_ids(prompt, num_tiles * self.num_image_token)

    def preprocess(self, image: ImageLike, prompt: str, index: int = 0) -> _Prepared:
        """Vision input, SAM2 input and prompt ids of one image (see the module docstring)."""
        arr = _as_rgb_array(image, index)
        mean, std = (
            (SAM2_INFER_MEAN, SAM2_INFER_STD)
            if self.official_normalisation
            else (IMAGENET_MEAN, IMAGENET_STD)
        )
        vision = self.processor.image_inputs(Image.fromarray(arr))
        return _Prepared(
            pixel_values=vision.pixel_values,
            g_pixel_values=self.processor.sam2_inputs(arr, mean=mean, std=std),
            prompt_ids=self.processor.prompt_ids(prompt, vision.slots),
            size=(int(arr.shape[0]), int(arr.shape[1])),
            image_grid_thw=vision.image_grid_thw,
        )

    # --- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        vit_tokens: torch.Tensor,
        *,
        max_new_tokens: int = 64,
        image_grid_thw: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """Greedy decoding for a batch of prompts (left-padded), each with its image.

        Args:
            prompt_ids: per sample the prompt token ids (with its ``<IMG_CONTEXT>`` slots).
            vit_tokens: ``[T, N, C_vit]`` ViT outputs (:meth:`InternVLMLLM.encode_vit`) of all tiles
                of the batch, in sample order.
            max_new_tokens: generation budget per sample.
            image_grid_thw: Qwen-VL ``[B, 3]`` patch grids (``None`` for InternVL).

        Returns:
            per sample the generated ids, cut after the first stop token (included).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        mllm = self.model.mllm
        length = max(len(p) for p in prompt_ids)
        b = len(prompt_ids)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, length - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[i, length - len(ids) :] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            stop_strings=self.stop_strings or None,
            return_dict_in_generate=True,
            # The image-slot token is never generated (it would have no image features).
            suppress_tokens=[int(mllm.img_context_token_id)],
        )
        extra = {"tokenizer": self.tokenizer} if self.stop_strings else {}
        grid = {} if image_grid_thw is None else {"image_grid_thw": image_grid_thw.to(self.device)}
        with self._autocast():
            new = mllm.generate_ids(input_ids, attention_mask, vit_tokens, gen_cfg, **grid, **extra)
        return [self._cut_at_stop(row.tolist()) for row in new]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _cut_at_stop(self, ids: list[int]) -> list[int]:
        """Generated ids up to and including the first stop token / the end of a stop string."""
        for k, t in enumerate(ids):
            if t in self.stop_token_ids:
                return ids[: k + 1]
        if self.stop_strings:
            for k in range(1, len(ids) + 1):
                text = self.tokenizer.decode(ids[:k], skip_special_tokens=False)
                if any(s in text for s in self.stop_strings):
                    return ids[:k]
        return ids

    def decode_text(self, ids: Sequence[int]) -> str:
        """Generated ids -> text without special tokens except ``[SEG]``, stripped."""
        kept = [t for t in ids if t not in self._strip_ids]
        return self.tokenizer.decode(kept, skip_special_tokens=False).strip()

    # --- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike],
        prompts: Sequence[str] | str,
        *,
        max_new_tokens: int = 64,
        threshold: float | None = None,
        tiling: TilingOptions | dict | str | None = None,
        flip_tta: bool | None = None,
    ) -> list[Prediction]:
        """Answer ``prompts`` about ``images`` (one batch) and segment each generated ``[SEG]``.

        Args:
            images: PIL images or ``[H, W, 3]`` uint8 RGB arrays, any sizes.
            prompts: one question per image (e.g. ``"Please segment the blood vessel."``), or one
                string for all; ``<image>\n`` is prepended.
            max_new_tokens: generation budget per image.
            threshold: mask threshold; ``None``: the predictor's default.
            tiling: window-by-window masks for large images (see the module docstring); ``None``: the
                predictor's default.
            flip_tta: flip test-time augmentation; ``None``: the predictor's default.

        Returns:
            one :class:`Prediction` per image, in order.
        """
        if isinstance(images, Image.Image | np.ndarray):
            raise TypeError("images must be a sequence of images (wrap a single image in a list)")
        n = len(images)
        if n == 0:
            raise ValueError("predict() got no images")
        if isinstance(prompts, str):
            prompts = [prompts] * n
        if len(prompts) != n:
            raise ValueError(f"got {n} images but {len(prompts)} prompts (one prompt per image)")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts[{i}] must be a non-empty string, got {p!r}")
        thr = self.threshold if threshold is None else _check_threshold(threshold, "predict()")
        tiling = self.tiling if tiling is None else TilingOptions.parse(tiling)
        flip = self.flip_tta if flip_tta is None else bool(flip_tta)

        arrays = [_as_rgb_array(im, i) for i, im in enumerate(images)]
        prepared = [self.preprocess(a, p, i) for i, (a, p) in enumerate(zip(arrays, prompts))]
        model = self.model
        pixel_values = torch.cat([p.pixel_values for p in prepared]).to(self.device)
        grid = _grids(prepared, self.device)
        with self._autocast():
            vit_tokens = model.mllm.encode_vit(
                pixel_values, **({} if grid is None else {"image_grid_thw": grid})
            )
            generated = self.generate(
                [p.prompt_ids for p in prepared],
                vit_tokens,
                max_new_tokens=max_new_tokens,
                image_grid_thw=grid,
            )
            # Teacher-forced forward of the training model over prompt + answer (right-padded, as in
            # training).
            batch = self._teacher_forced_batch(prepared, generated, vit_tokens, grid)
            out = model.forward_tensors(batch)
        counts = out["seg_counts"]
        for i, (c, ids) in enumerate(zip(counts, generated)):
            expected = sum(1 for t in ids if t == self.seg_token_id)
            if c != expected:  # pragma: no cover - guards the seg_hidden_shift / splicing invariants
                raise RuntimeError(f"image {i}: {expected} generated {SEG_TOKEN} but {c} embeddings taken")
        results = []
        logits_per_image = out["mask_logits"].split(counts)
        embeds_per_image = out["seg_embeds"].split(counts)
        for i, (prep, ids, logits, embeds) in enumerate(
            zip(prepared, generated, logits_per_image, embeds_per_image)
        ):
            h, w = prep.size
            views = 1
            if logits.shape[0]:
                probs = model.logits_to_probs(logits, (h, w)).float().cpu().numpy()
                if flip or tiling.applies(h, w, self.sam2_size):
                    probs, views = self._blended_probs(arrays[i], prompts[i], ids, probs, tiling, flip)
            else:
                probs = np.zeros((0, h, w), dtype=np.float32)
            results.append(
                Prediction(
                    text=self.decode_text(ids),
                    probs=probs.astype(np.float32, copy=False),
                    masks=probs > thr,
                    threshold=thr,
                    token_ids=list(ids),
                    seg_embeds=embeds.float().cpu().numpy(),
                    views=views,
                )
            )
        return results

    @torch.no_grad()
    def _blended_probs(
        self,
        image: np.ndarray,
        prompt: str,
        answer_ids: list[int],
        whole_probs: np.ndarray,
        tiling: TilingOptions,
        flip: bool,
    ) -> tuple[np.ndarray, int]:
        """Masks of one image from windows and/or mirrored views, blended (see the module docstring).

        Args:
            image: ``[H, W, 3]`` uint8 RGB.
            prompt: the question the answer was generated for.
            answer_ids: the generated answer (teacher-forced over every view).
            whole_probs: ``[n, H, W]`` probabilities of the whole-image pass (used as the unflipped view
                when the image is not tiled).
            tiling / flip: as :meth:`predict`.

        Returns:
            ``([n, H, W]`` float32 blended probabilities, number of views blended``)``.
        """
        h, w = image.shape[:2]
        n = whole_probs.shape[0]
        tiled = tiling.applies(h, w, self.sam2_size)
        side = tiling.window_for(self.sam2_size) if tiled else max(h, w)
        blender = WindowBlender(h, w, side, tiling.overlap, n)
        views: list[tuple[Window, bool]] = []
        for win in blender.windows:
            if tiled:
                views.append((win, False))
            else:  # the whole image: its unflipped view is already computed
                blender.add(win, whole_probs)
            if flip:
                views.append((win, True))
        for chunk in iter_chunks(views, self.window_batch_size):
            crops = [win.crop(image)[:, ::-1] if mirrored else win.crop(image) for win, mirrored in chunk]
            for (win, mirrored), probs in zip(chunk, self._view_probs(crops, prompt, answer_ids, n)):
                blender.add(win, probs[:, :, ::-1] if mirrored else probs)
        if tiled:
            MMLogger.get_current_instance().info(
                f"{h}x{w} image: masks blended from {blender.added} forwards over "
                f"{len(blender.windows)} windows of {side} px (overlap {tiling.overlap}"
                f"{', each also mirrored' if flip else ''})"
            )
        return blender.result(), blender.added

    @torch.no_grad()
    def _view_probs(
        self, crops: list[np.ndarray], prompt: str, answer_ids: list[int], n: int
    ) -> list[np.ndarray]:
        """Teacher-force ``answer_ids`` over each ``[h, w, 3]`` crop (one batch); ``[n, h, w]`` float32
        probabilities per crop at its own size."""
        prepared = [self.preprocess(np.ascontiguousarray(c), prompt, i) for i, c in enumerate(crops)]
        pixel_values = torch.cat([p.pixel_values for p in prepared]).to(self.device)
        grid = _grids(prepared, self.device)
        with self._autocast():
            vit_tokens = self.model.mllm.encode_vit(
                pixel_values, **({} if grid is None else {"image_grid_thw": grid})
            )
            batch = self._teacher_forced_batch(prepared, [list(answer_ids)] * len(crops), vit_tokens, grid)
            out = self.model.forward_tensors(batch)
        if out["seg_counts"] != [n] * len(crops):  # pragma: no cover - the same answer for every view
            raise RuntimeError(f"expected {n} [SEG] embeddings per view, got {out['seg_counts']}")
        return [
            self.model.logits_to_probs(lg, p.size).float().cpu().numpy()
            for lg, p in zip(out["mask_logits"].split(out["seg_counts"]), prepared)
        ]

    def _teacher_forced_batch(
        self,
        prepared: list[_Prepared],
        generated: list[list[int]],
        vit_tokens: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
    ) -> Sa2VABatch:
        """A :class:`Sa2VABatch` of prompt + generated ids (right-padded), with the cached ViT tokens."""
        seqs = [p.prompt_ids + g for p, g in zip(prepared, generated)]
        length = max(len(s) for s in seqs)
        b = len(seqs)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
        sam2_dtype = next(self.model.grounding_encoder.parameters()).dtype
        g_pixel_values = torch.stack([p.g_pixel_values for p in prepared]).to(self.device, sam2_dtype)
        return Sa2VABatch(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            labels=torch.full_like(input_ids, -100).to(self.device),
            pixel_values=None,
            num_tiles=[int(p.pixel_values.shape[0]) for p in prepared],
            g_pixel_values=g_pixel_values,
            masks=[torch.zeros((0, *p.size), dtype=torch.uint8) for p in prepared],
            image_ids=[str(i) for i in range(b)],
            vit_tokens=vit_tokens,
            image_grid_thw=image_grid_thw,
        )


def _pick_threshold(threshold: float | None, threshold_file: str | Path | None) -> float:
    if threshold is not None and threshold_file is not None:
        raise ValueError("give either threshold or threshold_file, not both")
    if threshold_file is not None:
        return load_threshold(threshold_file)
    return 0.5 if threshold is None else _check_threshold(threshold, "threshold")


def _grids(prepared: list[_Prepared], device: torch.device) -> torch.Tensor | None:
    """``[B, 3]`` Qwen-VL patch grids of a batch on ``device``; ``None`` for InternVL tiles."""
    grids = [p.image_grid_thw for p in prepared]
    if all(g is None for g in grids):
        return None
    return torch.cat(grids).to(device)


def _processor_config(
    cfg: Config,
    processor: Sa2VAProcessor | dict | None,
    tiling: dict[str, Any],
    model: Sa2VAModel,
    config_path: str | Path,
) -> Sa2VAProcessor | dict:
    """The predictor's processor: given, else the config's ``processor``, else its validation (test,
    training) dataset's; ``tiling`` overrides its InternVL tiling; the model's SAM2 side where unset."""
    if processor is None:
        processor = cfg.get("processor")
    for loader in ("val_dataloader", "test_dataloader", "train_dataloader"):
        if processor is not None:
            break
        processor = ((cfg.get(loader) or {}).get("dataset") or {}).get("processor")
    if processor is None:
        raise ValueError(
            f"{config_path}: no `processor` (top level or in a dataloader's dataset): the predictor "
            "needs the model's Sa2VAProcessor"
        )
    if isinstance(processor, Sa2VAProcessor):
        if tiling:
            raise ValueError(
                f"tiling overrides {sorted(tiling)} need a processor config dict, not a built one"
            )
        return processor
    processor = copy.deepcopy(dict(processor))
    if tiling:
        if "image_processor" in processor:  # Sa2VAProcessor(image_processor=dict(...))
            processor["image_processor"] = dict(processor["image_processor"], **tiling)
        else:  # Sa2VAProcessor.from_pretrained(path, min_tiles=..., ...)
            processor.update(tiling)
    processor.setdefault("sam2_size", int(model.grounding_encoder.image_size))
    return processor
