"""Sa2VA inference: greedy generation, then one mask per generated ``[SEG]``.

:class:`Sa2VAPredictor` wraps a built :class:`~projects.sa2va.models.sa2va.Sa2VAModel` (eval mode, no
grad) and follows the official Hugging Face ``predict_forward``:

1. prompt = ``<image>\\n`` + question in the chat template's ``INSTRUCTION`` (no system prompt), with
   ``<image>`` -> ``<img>`` + ``<IMG_CONTEXT>`` * (tokens per tile * tiles) + ``</img>``, built by the
   same helpers as :class:`~projects.sa2va.datasets.refseg.RefSegDataset`;
2. InternVL dynamic tiles (PIL bicubic) for the ViT; the image resized (PIL bicubic, aspect not kept) to
   the SAM2 input size for SAM2;
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
image as above. With tiling (:mod:`.tiling`) the masks of an image larger than the window are then
computed window by window: each ``window x window`` crop is preprocessed like a whole image (same
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
from xtuner.utils import PROMPT_TEMPLATE

from ..datasets.image_io import to_rgb
from ..datasets.image_processing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAM2_INFER_MEAN,
    SAM2_INFER_STD,
    dynamic_tiles,
    internvl_pixel_values,
    sam2_pixel_values,
)
from ..datasets.prompt import encode_with_image, image_question, instruction_text, prefix_ids
from ..datasets.qwenvl_processing import QwenVLImageProcessor
from ..models.builder import build_component
from ..models.internvl import InternLM2InternVL, InternVLMLLM, Qwen2InternVL, read_hf_config
from ..models.qwenvl import Qwen2_5_VLSa2VA, Qwen3VLSa2VA, QwenVLMLLM
from ..models.sa2va import SEG_TOKEN, Sa2VAModel
from ..models.tokenizer import load_tokenizer
from ..structures import Sa2VABatch
from .tiling import TilingOptions, Window, WindowBlender, iter_chunks

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

#: Model config used by :meth:`Sa2VAPredictor.from_hf` (its weights come from the folder).
HF_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs/_base_/model_sa2va_qwen2.py"
#: ``llm_config.architectures`` of an HF folder -> the InternVL adapter class.
HF_LLM_ADAPTERS: dict[str, type[InternVLMLLM]] = {
    "Qwen2ForCausalLM": Qwen2InternVL,
    "InternLM2ForCausalLM": InternLM2InternVL,
}
#: Model config used by :meth:`Sa2VAPredictor.from_hf` for the Qwen-VL families.
HF_QWENVL_MODEL_CONFIG = Path(__file__).resolve().parents[1] / "configs/_base_/model_sa2va_qwen3vl.py"
#: ``text_config.model_type`` of a Sa2VA Qwen-VL folder -> the Qwen-VL adapter class.
HF_QWENVL_ADAPTERS: dict[str, type[QwenVLMLLM]] = {
    "qwen3_vl_text": Qwen3VLSa2VA,
    "qwen2_5_vl_text": Qwen2_5_VLSa2VA,
}


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
        template: xtuner chat template dict, or its name in ``PROMPT_TEMPLATE``; ``None``: the model's
            (``model.mllm.template``, from the HF ``config.json`` or the LLM family).
        min_tiles / max_tiles / use_thumbnail: InternVL dynamic tiling (official: 1 / 12 / True).
        image_processor: the Qwen-VL families' image processor (:class:`QwenVLImageProcessor` or its
            config dict); required for a Qwen-VL model, refused for an InternVL one.
        threshold: default mask threshold (0.5 as the official code, or a tuned one).
        official_normalisation: SAM2 input normalised with the bf16-rounded ImageNet constants as the
            official predictor (True) or with the exact constants as training (False).
        device: where the model runs (it is moved there); ``None``: where its parameters are.
        autocast: run under ``torch.autocast`` in the model's low-precision dtype (bf16/fp16), as
            training does; ``None``: when any parameter is bf16/fp16 (frozen parts kept in bf16 next
            to fp32 trainable ones need it).
        tiling: default window-by-window prediction of large images (:class:`.tiling.TilingOptions`,
            its dict, or a mode ``'off'`` / ``'on'`` / ``'auto'``; ``None``: off). The default window
            is the SAM2 input size.
        flip_tta: default for flip test-time augmentation (mean of the probabilities of the view and
            of its left-right mirror, mirrored back).
        window_batch_size: views (windows / flipped views) per teacher-forced forward.
    """

    def __init__(
        self,
        model: Sa2VAModel,
        *,
        template: dict | str | None = None,
        min_tiles: int = 1,
        max_tiles: int = 12,
        use_thumbnail: bool = True,
        image_processor: Any = None,
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
        self.tokenizer = model.tokenizer
        self.template = self._resolve_template(template)
        self.min_tiles = int(min_tiles)
        self.max_tiles = int(max_tiles)
        self.use_thumbnail = bool(use_thumbnail)
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
        self.image_processor = build_component(image_processor)
        qwen_vl = isinstance(model.mllm, QwenVLMLLM)
        if qwen_vl and self.image_processor is None:
            raise ValueError(f"{type(model.mllm).__name__} needs an image_processor (QwenVLImageProcessor)")
        if not qwen_vl and self.image_processor is not None:
            raise ValueError(f"{type(model.mllm).__name__} takes InternVL tiles, not an image_processor")
        vision_config = getattr(model.mllm, "vision_config", None)
        self.tile_size = int(vision_config.image_size) if not qwen_vl else 0
        self.num_image_token = int(model.mllm.num_image_token)
        self.sam2_size = int(model.grounding_encoder.image_size)
        self.seg_token_id = int(model.seg_token_idx)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        self.pad_token_id = int(pad)
        self.stop_token_ids, self.stop_strings = self._stop_criteria()
        # Ids removed from the returned text: every special token except [SEG].
        self._strip_ids = set(tok.all_special_ids) - {self.seg_token_id}
        MMLogger.get_current_instance().info(
            f"Sa2VAPredictor: device {self.device}, tiles {self.min_tiles}..{self.max_tiles} of "
            f"{self.tile_size} px (thumbnail {self.use_thumbnail}), SAM2 {self.sam2_size} px with "
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
            **kwargs: other :class:`Sa2VAPredictor` arguments. ``template``, ``min_tiles``,
                ``max_tiles`` and ``use_thumbnail`` default to the config's ``template`` and its
                validation (else training) dataset, when present.
        """
        from ..engine.builder import build_model, load_config

        cfg = load_config(config_path, cfg_options)
        model = build_model(cfg, checkpoint, seed=seed)
        for key, value in _config_defaults(cfg).items():
            kwargs.setdefault(key, value)
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
            model_config: the model config whose ``path`` places are pointed at ``folder``
                (``model.mllm.path``, ``model.load_weights.path``; ``model.mllm.tokenizer`` becomes
                :func:`~projects.sa2va.models.tokenizer.load_tokenizer` of ``folder``, which picks the
                tokenizer class by family without remote code); default :data:`HF_MODEL_CONFIG`. The
                InternVL adapter class is chosen from ``llm_config.architectures`` (:data:`HF_LLM_ADAPTERS`).
            device / cfg_options: as :meth:`from_config` (``cfg_options`` win over the above).
            **kwargs: as :meth:`from_config`; the template and tiling default to the folder's
                ``template``, ``min_dynamic_patch``, ``max_dynamic_patch``, ``use_thumbnail``.
        """
        folder = Path(folder)
        hf = read_hf_config(folder)
        if "text_config" in hf and "vision_config" in hf:
            return cls._from_qwenvl_folder(
                folder, hf, checkpoint, model_config, device, cfg_options, **kwargs
            )
        archs = (hf.get("llm_config") or {}).get("architectures") or []
        adapters = [HF_LLM_ADAPTERS[a] for a in archs if a in HF_LLM_ADAPTERS]
        if not adapters:
            raise ValueError(
                f"{folder / 'config.json'}: llm_config.architectures = {archs!r}; supported: "
                f"{sorted(HF_LLM_ADAPTERS)}"
            )
        adapter = adapters[0]
        overrides = {
            "model.mllm.type": adapter,
            "model.mllm.path": str(folder),
            "model.mllm.tokenizer": dict(_delete_=True, type=load_tokenizer, path=str(folder)),
            "model.load_weights.path": str(folder),
            **(cfg_options or {}),
        }
        kwargs.setdefault("template", hf.get("template") or adapter.family.default_template)
        for key, hf_key in (
            ("min_tiles", "min_dynamic_patch"),
            ("max_tiles", "max_dynamic_patch"),
            ("use_thumbnail", "use_thumbnail"),
        ):
            if hf.get(hf_key) is not None:
                kwargs.setdefault(key, hf[hf_key])
        return cls.from_config(
            model_config or HF_MODEL_CONFIG, checkpoint, device=device, cfg_options=overrides, **kwargs
        )

    @classmethod
    def _from_qwenvl_folder(
        cls,
        folder: Path,
        hf: dict,
        checkpoint: str | Path | None,
        model_config: str | Path | None,
        device: str | torch.device,
        cfg_options: dict | None,
        **kwargs: Any,
    ) -> Sa2VAPredictor:
        """:meth:`from_hf` for a Sa2VA Qwen-VL folder: adapter by ``text_config.model_type``, the folder's
        tokenizer and image processor (``preprocessor_config.json``) at Sa2VA's pixel budget."""
        text_type = (hf.get("text_config") or {}).get("model_type")
        if text_type not in HF_QWENVL_ADAPTERS:
            raise ValueError(
                f"{folder / 'config.json'}: text_config.model_type = {text_type!r}; supported Qwen-VL "
                f"families: {sorted(HF_QWENVL_ADAPTERS)}"
            )
        adapter = HF_QWENVL_ADAPTERS[text_type]
        overrides = {
            "model.mllm.type": adapter,
            "model.mllm.path": str(folder),
            "model.mllm.tokenizer": dict(_delete_=True, type=load_tokenizer, path=str(folder)),
            "model.load_weights.path": str(folder),
            **(cfg_options or {}),
        }
        kwargs.setdefault("template", hf.get("template") or adapter.family.default_template)
        kwargs.setdefault("image_processor", QwenVLImageProcessor(path=folder))
        return cls.from_config(
            model_config or HF_QWENVL_MODEL_CONFIG, checkpoint, device=device, cfg_options=overrides, **kwargs
        )

    def _resolve_template(self, template: dict | str | None) -> dict:
        """Template dict from a dict, a ``PROMPT_TEMPLATE`` name, or the model's template name."""
        if template is None:
            template = self.model.mllm.template
        if isinstance(template, str):
            if template not in PROMPT_TEMPLATE:
                raise KeyError(
                    f"unknown chat template {template!r} (xtuner PROMPT_TEMPLATE has no such entry)"
                )
            template = PROMPT_TEMPLATE[template]
        template = dict(template)
        if "INSTRUCTION" not in template:
            raise ValueError(f"chat template has no 'INSTRUCTION' entry: {template!r}")
        return template

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
        text = instruction_text(self.template, image_question(prompt))
        tokens = {} if self.image_processor is None else {"image_tokens": self.image_processor.image_tokens}
        return prefix_ids(self.tokenizer) + encode_with_image(
            self.tokenizer, text, num_tiles=num_tiles, num_image_token=self.num_image_token, **tokens
        )

    def preprocess(self, image: ImageLike, prompt: str, index: int = 0) -> _Prepared:
        """Tiles, SAM2 input and prompt ids of one image (see the module docstring)."""
        arr = _as_rgb_array(image, index)
        pil = Image.fromarray(arr)
        mean, std = (
            (SAM2_INFER_MEAN, SAM2_INFER_STD)
            if self.official_normalisation
            else (IMAGENET_MEAN, IMAGENET_STD)
        )
        g_pixel_values = sam2_pixel_values(
            arr, size=self.sam2_size, mean=mean, std=std, resample="pil_bicubic"
        )
        size = (int(arr.shape[0]), int(arr.shape[1]))
        if self.image_processor is not None:  # Qwen-VL: patches + grid; one "tile" per image token
            patches, grid = self.image_processor(pil)
            n_tokens = int(grid.prod()) // self.image_processor.merge_size**2
            return _Prepared(
                pixel_values=patches,
                g_pixel_values=g_pixel_values,
                prompt_ids=self.build_prompt_ids(prompt, n_tokens),
                size=size,
                image_grid_thw=grid,
            )
        tiles = dynamic_tiles(
            pil,
            min_num=self.min_tiles,
            max_num=self.max_tiles,
            tile_size=self.tile_size,
            use_thumbnail=self.use_thumbnail,
        )
        mean, std = (
            (SAM2_INFER_MEAN, SAM2_INFER_STD)
            if self.official_normalisation
            else (IMAGENET_MEAN, IMAGENET_STD)
        )
        return _Prepared(
            pixel_values=internvl_pixel_values(tiles),
            g_pixel_values=sam2_pixel_values(
                arr, size=self.sam2_size, mean=mean, std=std, resample="pil_bicubic"
            ),
            prompt_ids=self.build_prompt_ids(prompt, len(tiles)),
            size=(int(arr.shape[0]), int(arr.shape[1])),
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
        grid = None
        if self.image_processor is not None:
            grid = torch.cat([p.image_grid_thw for p in prepared]).to(self.device)
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
        grid = None
        if self.image_processor is not None:
            grid = torch.cat([p.image_grid_thw for p in prepared]).to(self.device)
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


def _config_defaults(cfg: Config) -> dict[str, Any]:
    """Predictor defaults from a config: its ``template`` and the tiling of its eval/train dataset."""
    out: dict[str, Any] = {}
    template = cfg.get("template")
    if isinstance(template, dict):
        out["template"] = dict(template)
    for loader in ("val_dataloader", "test_dataloader", "train_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") or {}
        keys = ("min_tiles", "max_tiles", "use_thumbnail", "image_processor")
        found = {k: dataset[k] for k in keys if dataset.get(k) is not None}
        if found:
            out.update(found)
            break
    return out
