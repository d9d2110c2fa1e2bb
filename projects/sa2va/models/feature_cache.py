"""Frozen-feature cache: InternViT and SAM2 image-encoder outputs computed once per input and reused.

Both image encoders are frozen in the Sa2VA recipe, so their outputs are a pure function of
(encoder weights, exact input tensor, compute context). The cache key is built from exactly those:

* ``input digest``: SHA-256 of the preprocessed pixel tensor of one sample (its InternViT tiles
  ``[t, 3, S, S]``, or its SAM2 input ``[3, G, G]``), including dtype and shape. It therefore covers
  the image file content, the resize method (e.g. ``sam2_resample``), the normalisation and every
  augmentation variant (each variant is its own entry). Digests are best computed in the DataLoader
  workers (``sa2va_collate(..., digests=True)``); a batch without them is hashed here (slower).
* ``weights fingerprint``: SHA-256 over every parameter and buffer (name, dtype, shape, bytes) of the
  encoder. It is recomputed whenever a tensor of the encoder is replaced or modified in place
  (tracked through ``data_ptr`` and the autograd version counter), e.g. after loading a checkpoint.
* ``context``: autocast dtype, ``training`` flag and the storage dtype.

What is cached (:class:`Sa2VAModel` applies the trainable parts to it):

* ViT: the vision encoder's output ``[t, N, C_vit]`` per sample (before ``mlp1``);
* SAM2: the raw neck levels of the SAM2 image encoder, each ``[C, h_l, w_l]`` per sample (before the
  trainable ``conv_s0`` / ``conv_s1`` of the mask decoder).

The cache knows nothing of the model: :meth:`Sa2VAModel.frozen_encoders` hands it the two encoders as
callables, with the modules whose weights fingerprint them (:class:`FrozenEncoders`), at each call.

Stores: ``'memory'`` (a per-process LRU bounded by bytes, kept on the compute device or the host;
under DDP each rank caches the samples of its own shard) and ``'disk'`` (one safetensors file per
entry, written to a temporary name and renamed, so concurrent ranks never read a partial file;
an in-memory LRU of ``max_bytes`` sits in front of it). Storage dtype ``None`` keeps the encoder's
output dtype (bit-exact); ``'bfloat16'`` halves the bytes of fp32 features (relative error <= 2^-8).

When to turn it on: the leaf config decides (``feature_cache=dict(mode=...)`` on ``Sa2VAModel``).
The Sa2VA model bases turn it on because their datasets have no augmentation; a config that sets a
random ``augment`` should set ``mode='off'`` (every random variant is new, so the cache only costs).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mmengine.logging import MMLogger
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..digests import sample_digests

if TYPE_CHECKING:
    from ..structures import Sa2VABatch

CACHE_MODES = ("off", "memory", "disk")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FrozenEncoders:
    """The two frozen image encoders as the cache calls them (built by ``Sa2VAModel.frozen_encoders``).

    Attributes:
        vit: ``(pixels, image_grid_thw) -> vit_tokens``: ``pixels`` are the vision input rows of some
            samples on the compute device (InternVL ``[R, 3, S, S]`` tiles, Qwen-VL ``[R, D]`` patches),
            ``image_grid_thw`` their ``[b, 3]`` patch grids (Qwen-VL) or ``None``; returns
            ``[R // vit_rows_per_output, N, C_vit]``.
        vit_rows_per_output: input rows per output row of ``vit`` (InternVL 1; Qwen-VL: the patches of
            one image give one output row).
        vit_weights: the module whose parameters and buffers make the ViT's weights fingerprint.
        sam2: ``g_pixels [b, 3, G, G] -> levels``: the image encoder's raw neck levels, each
            ``[b, C, h_l, w_l]``, highest resolution first.
        sam2_weights: the module whose parameters and buffers make the SAM2 encoder's fingerprint.
    """

    vit: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    vit_rows_per_output: int
    vit_weights: nn.Module
    sam2: Callable[[torch.Tensor], list[torch.Tensor]]
    sam2_weights: nn.Module


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex) over every parameter and buffer of ``module`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(_named_tensors(module), key=lambda kv: kv[0]):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        data = t.detach().contiguous().reshape(-1)
        if data.numel():
            h.update(memoryview(data.cpu().view(torch.uint8).numpy()))
    return h.hexdigest()


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _named_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from ((n, b) for n, b in module.named_buffers() if b is not None)


def _state_signature(module: nn.Module) -> tuple:
    """Cheap signature that changes when any tensor of ``module`` is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version, t.dtype) for _, t in _named_tensors(module))


class _EncoderFingerprint:
    """The weights fingerprint of one encoder, recomputed only when its tensors change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._signature: tuple | None = None
        self._value = ""
        self.pinned = False

    def pin(self, module: nn.Module) -> str:
        """Compute the fingerprint now and keep it for the rest of the run (see
        :meth:`FrozenFeatureCache.pin_fingerprints`)."""
        self.pinned = False
        self._signature = None
        value = self.get(module)
        self.pinned = True
        return value

    def get(self, module: nn.Module) -> str:
        if self.pinned:
            return self._value
        sig = _state_signature(module)
        if sig != self._signature:
            self._value = module_fingerprint(module)
            self._signature = sig
            MMLogger.get_current_instance().info(
                f"feature cache: {self.name} weights fingerprint {self._value[:16]}"
            )
        return self._value


class MemoryStore:
    """LRU of tensor lists bounded by their total bytes.

    Args:
        max_bytes: capacity; the least recently used entries are dropped beyond it.
        device: where entries live: ``None`` = where they were computed (the GPU: no copy per
            step), ``'cpu'`` = host memory (pinned when a GPU is present).
    """

    def __init__(self, max_bytes: int, device: str | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.device = device
        self._data: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> list[torch.Tensor] | None:
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
        return entry

    def put(self, key: str, tensors: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size > self.max_bytes:
            return
        if self.device is not None:
            tensors = [t.to(self.device) for t in tensors]
            if self.device == "cpu" and torch.cuda.is_available():
                tensors = [t.pin_memory() for t in tensors]
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= sum(t.numel() * t.element_size() for t in old)
        self._data[key] = tensors
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._data.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in dropped)


class DiskStore:
    """One ``<key>.safetensors`` file per entry under ``root/<key[:2]>/``; atomic writes.

    A file is written under a unique temporary name in the same folder and renamed into place
    (``os.replace``), so another rank sees either no file or a complete one. An unreadable file is
    treated as a miss (and overwritten by the next ``put``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(
        self, key: str, device: torch.device | str = "cpu"
    ) -> tuple[list[torch.Tensor], dict[str, str]] | None:
        """``(tensors, metadata)`` of ``key``, or ``None`` when absent or unreadable."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                return [f.get_tensor(str(i)) for i in range(len(f.keys()))], meta
        except Exception as e:  # a truncated/corrupt file from a crashed writer: recompute it
            MMLogger.get_current_instance().warning(f"feature cache: unreadable {p} ({e}); recomputing")
            return None

    def put(self, key: str, tensors: list[torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            tensors_cpu = {str(i): t.detach().contiguous().cpu() for i, t in enumerate(tensors)}
            save_file(tensors_cpu, tmp, metadata=metadata)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class FrozenFeatureCache:
    """Cache of the frozen encoders' outputs, keyed by weights, exact input and compute context.

    Args:
        mode: ``'memory'``, ``'disk'`` or ``'off'`` (see :func:`build_feature_cache`).
        dir: cache folder for ``'disk'`` (shared by all ranks; safe for concurrent writers).
        max_bytes: capacity of the in-memory LRU (in front of the disk store in ``'disk'`` mode;
            0 disables it there).
        dtype: storage dtype (``None``: the encoder's output dtype, exact; ``'bfloat16'``: half of
            fp32, relative error <= 2^-8). ``'disk'`` defaults to ``'bfloat16'``.
        store_device: ``None`` keeps memory entries on the compute device, ``'cpu'`` on the host.
    """

    def __init__(
        self,
        *,
        mode: str = "memory",
        dir: str | None = None,
        max_bytes: int = 16 << 30,
        dtype: str | None = None,
        store_device: str | None = None,
    ) -> None:
        if mode not in ("memory", "disk"):
            raise ValueError(f"FrozenFeatureCache mode must be 'memory' or 'disk', got {mode!r}")
        if mode == "disk" and not dir:
            raise ValueError("feature_cache mode='disk' needs `dir`")
        if mode == "disk" and dtype is None:
            dtype = "bfloat16"
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"feature_cache dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
        self.mode = mode
        self.dtype = _DTYPES[dtype] if dtype is not None else None
        self.memory = MemoryStore(max_bytes, store_device)
        self.disk = DiskStore(dir) if mode == "disk" else None
        self._fp_vit = _EncoderFingerprint("vision encoder")
        self._fp_sam2 = _EncoderFingerprint("SAM2 image encoder")
        self._warned_no_digests = False
        # Per SAM2 level: is the encoder's output channels-last? Restored after stacking cached
        # entries so the decoder sees the same layout (conv kernels, hence bits) as without cache.
        self._sam2_layout: list[bool] | None = None
        self.hits = 0
        self.misses = 0

    def pin_fingerprints(self, encoders: FrozenEncoders) -> None:
        """Fingerprint both encoders now, from their whole weights, and keep the values for the run.

        For DeepSpeed ZeRO-3, which partitions every parameter after this call: the tensors the cache
        would see later are each rank's empty placeholders, whose fingerprint would be the same for any
        weights (a disk cache built from other weights would then be reused). The encoders are frozen,
        so their fingerprints cannot change during the run.
        """
        self._fp_vit.pin(encoders.vit_weights)
        self._fp_sam2.pin(encoders.sam2_weights)

    # --- keys ------------------------------------------------------------------------------------
    def _context(self, module: nn.Module, device: torch.device) -> str:
        amp = "none"
        if torch.is_autocast_enabled(device.type):
            amp = str(torch.get_autocast_dtype(device.type))
        return f"amp={amp}|train={module.training}|store={self.dtype}"

    def _key(self, kind: str, fingerprint: str, context: str, digest: str) -> str:
        h = hashlib.sha256(f"{kind}|{fingerprint}|{context}|{digest}".encode()).hexdigest()
        return f"{kind}-{h[:40]}"

    # --- lookup ----------------------------------------------------------------------------------
    def _get(self, key: str, device: torch.device) -> list[torch.Tensor] | None:
        entry = self.memory.get(key)
        if entry is None and self.disk is not None:
            got = self.disk.get(key, device=device)
            if got is not None:
                entry, meta = got
                if "channels_last" in meta and self._sam2_layout is None:
                    self._sam2_layout = [c == "1" for c in meta["channels_last"].split(",")]
                self.memory.put(key, entry)
        if entry is not None and entry[0].device != device:
            entry = [t.to(device, non_blocking=True) for t in entry]
        return entry

    def _put(self, key: str, tensors: list[torch.Tensor]) -> None:
        if self.dtype is not None:
            tensors = [t.to(self.dtype) for t in tensors]
        tensors = [t.detach().contiguous().clone() for t in tensors]
        self.memory.put(key, tensors)
        if self.disk is not None:
            meta = None
            if key.startswith("sam2-") and self._sam2_layout is not None:
                meta = {"channels_last": ",".join("1" if c else "0" for c in self._sam2_layout)}
            self.disk.put(key, tensors, meta)

    def _cached(self, keys: list[str], device: torch.device, compute) -> list[list[torch.Tensor]]:
        """Entries for ``keys``; ``compute(miss_indices) -> entries`` fills the misses (deduplicated)."""
        entries: list[list[torch.Tensor] | None] = [self._get(k, device) for k in keys]
        first: dict[str, int] = {}
        for i, (k, e) in enumerate(zip(keys, entries)):
            if e is None:
                first.setdefault(k, i)
        self.hits += len(keys) - len(first)
        self.misses += len(first)
        if first:
            todo = list(first.values())
            for i, new in zip(todo, compute(todo)):
                self._put(keys[i], new)
                entries[i] = [t.to(self.dtype) for t in new] if self.dtype is not None else new
            for i, k in enumerate(keys):
                if entries[i] is None:
                    entries[i] = entries[first[k]]
        return entries  # type: ignore[return-value]

    # --- the model hook --------------------------------------------------------------------------
    def encode(
        self, batch: Sa2VABatch, encoders: FrozenEncoders, device: torch.device
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Cached ``(vit_tokens [T', N, C_vit] or None, SAM2 levels)`` for ``batch``.

        Args:
            batch: the batch; its pixel tensors may still be on the host (the preprocessor leaves them
                there when the model has a cache): only the samples that miss are copied to ``device``
                and encoded.
            encoders: the frozen encoders and their weights (``Sa2VAModel.frozen_encoders()``).
            device: the compute device (where the returned tensors are).

        Returns:
            ``vit_tokens``: ``[T / vit_rows_per_output, N, C_vit]`` in sample order (``None`` for a batch
            without vision input); ``levels``: each ``[B, C, h_l, w_l]``, in the encoder's memory layout.
        """
        digests = batch.input_digests
        if digests is None:
            if not self._warned_no_digests:
                MMLogger.get_current_instance().warning(
                    "feature cache: batch has no input digests; hashing pixels in the training process "
                    "(set `collate_fn=dict(type=sa2va_collate, digests=True)` to do it in the workers)"
                )
                self._warned_no_digests = True
            digests = sample_digests(
                batch.pixel_values, batch.num_tiles, batch.g_pixel_values, batch.image_grid_thw
            )
        if len(digests) != batch.batch_size:
            raise ValueError(f"batch has {len(digests)} input digests for {batch.batch_size} samples")

        vit_tokens = None
        if batch.pixel_values is not None:
            vit_module = encoders.vit_weights
            fp = self._fp_vit.get(vit_module)
            ctx = self._context(vit_module, device)
            with_tiles = [i for i, n in enumerate(batch.num_tiles) if n > 0]
            starts = [sum(batch.num_tiles[:i]) for i in range(batch.batch_size)]

            per_out = encoders.vit_rows_per_output

            def run_vit(todo: list[int]) -> list[list[torch.Tensor]]:
                rows = [with_tiles[j] for j in todo]
                pix = torch.cat(
                    [batch.pixel_values[starts[i] : starts[i] + batch.num_tiles[i]] for i in rows]
                )
                grid = None if batch.image_grid_thw is None else batch.image_grid_thw[rows]
                with torch.no_grad():
                    out = encoders.vit(pix.to(device, non_blocking=True), grid)
                return [[t] for t in out.split([batch.num_tiles[i] // per_out for i in rows])]

            keys = [self._key("vit", fp, ctx, digests[i][0]) for i in with_tiles]
            vit_tokens = torch.cat([e[0] for e in self._cached(keys, device, run_vit)])

        sam_module = encoders.sam2_weights
        fp = self._fp_sam2.get(sam_module)
        ctx = self._context(sam_module, device)

        def run_sam2(todo: list[int]) -> list[list[torch.Tensor]]:
            g_pix = batch.g_pixel_values
            if todo != list(range(g_pix.shape[0])):  # a subset: only the first epoch pays for this
                g_pix = g_pix[torch.tensor(todo, device=g_pix.device)]
            with torch.no_grad():
                levels = encoders.sam2(g_pix.to(device, non_blocking=True))
            self._sam2_layout = [_channels_last(lvl) for lvl in levels]
            return [[lvl[j] for lvl in levels] for j in range(len(todo))]

        keys = [self._key("sam2", fp, ctx, d[1]) for d in digests]
        entries = self._cached(keys, device, run_sam2)
        fpn = [torch.stack([e[lvl] for e in entries]) for lvl in range(len(entries[0]))]
        if self._sam2_layout is not None:
            fpn = [
                f.contiguous(memory_format=torch.channels_last) if cl else f.contiguous()
                for f, cl in zip(fpn, self._sam2_layout)
            ]
        return vit_tokens, fpn

    def stats(self) -> dict[str, Any]:
        """Counters: ``hits``, ``misses`` (entries computed), in-memory ``entries`` and ``bytes``."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": len(self.memory),
            "bytes": self.memory.bytes,
        }


def build_feature_cache(cfg: FrozenFeatureCache | dict | None) -> FrozenFeatureCache | None:
    """``None`` or ``dict(mode='off')`` -> ``None``; a dict -> :class:`FrozenFeatureCache`."""
    if cfg is None or isinstance(cfg, FrozenFeatureCache):
        return cfg
    cfg = dict(cfg)
    cfg.pop("type", None)
    mode = cfg.get("mode", "memory")
    if mode not in CACHE_MODES:
        raise ValueError(f"feature_cache mode must be one of {CACHE_MODES}, got {mode!r}")
    if mode == "off":
        return None
    return FrozenFeatureCache(**cfg)
