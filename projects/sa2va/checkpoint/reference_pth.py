"""``.pth`` states in the reference (bytedance/Sa2VA) naming, both ways.

The reference training model names its InternVL chat model ``mllm.model`` (``mllm.model.vision_model.*``,
``mllm.model.mlp1.*``, ``mllm.model.language_model.*``), keeps SAM2's ``gamma`` and stores LoRA in one of
two PEFT spellings: the full module state (``...q_proj.base_layer.weight``,
``...q_proj.lora_A.default.weight``,
``...embed_tokens.modules_to_save.default.weight``, ``...original_module.weight``; DeepSpeed checkpoints) or
``get_peft_model_state_dict`` output, where the adapter name is dropped (``...q_proj.lora_A.weight``) and a
``modules_to_save`` copy is stored under the plain module name (``...embed_tokens.weight``).
See :data:`~.key_tables.REFERENCE_PTH_TABLE`.

* :func:`load_reference_state` applies such a state (full or trainable-only) to a ``Sa2VAModel``.
* :func:`hf_folder_to_reference_pth` writes an official HF folder as a full reference-style state
  (plain LM names, no LoRA), which the reference code's ``pretrained_pth`` and our ``pretrained_pth`` accept.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from mmengine.logging import MMLogger
from safetensors import safe_open
from torch import nn

from .hf_sa2va import CheckpointMismatchError, hf_weight_files, mismatch_message
from .key_tables import (
    HF_KEY_TABLE,
    PEFT_LM_PREFIX,
    REFERENCE_PTH_TABLE,
    UnknownKeyError,
    peft_role,
    plain_name,
)

__all__ = ["hf_folder_to_reference_pth", "is_reference_state", "load_reference_state"]

REFERENCE_MARKER = "mllm.model."


def is_reference_state(state: dict[str, torch.Tensor]) -> bool:
    """True when the state uses the reference naming (any key under ``mllm.model.``)."""
    return any(k.startswith(REFERENCE_MARKER) for k in state)


def _reference_key_info(key: str) -> tuple[str, str]:
    """Reference key -> (plain model key, role): ``base``, ``copy``, ``lora_A``, ``lora_B`` or ``copy?``.

    ``copy?`` marks a PEFT-wrapped name without infix: a ``modules_to_save`` copy in
    ``get_peft_model_state_dict`` output if the module has one, else a plain base tensor.
    """
    mkey = REFERENCE_PTH_TABLE.to_model(key)
    if mkey.startswith(PEFT_LM_PREFIX):
        role = peft_role(mkey)
        inner = mkey[len(PEFT_LM_PREFIX) :]
        has_infix = re.search(r"\.(base_layer|original_module|modules_to_save|lora_[A-Za-z_]+)\.", inner)
        # get_peft_model_state_dict spelling: `lora_A.weight` (no adapter name) -> add `default`.
        mkey = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", mkey)
        return plain_name(mkey), ("copy?" if not has_infix else role)
    return mkey, "base"


def load_reference_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state") -> int:
    """Copy a reference-style state into ``model`` (after LoRA); returns the number of tensors copied.

    Rules: every key must map to a model tensor (else error naming it); shapes must match; a plain
    (un-PEFT) LM weight fills the base weight and, for ``modules_to_save`` modules, the trained copy too
    (only the copy when the model released its frozen original), for ``trainable_token_indices`` modules
    the trained rows too (the weight's rows of those token ids, as PEFT initialises them); the
    ``original_module`` tensors of a full PEFT state are skipped (and counted in the log) when the model
    released them (:func:`~projects.sa2va.models.mllm.release_frozen_originals`).
    If the state holds LoRA factors, every LoRA factor of the model must be present; a state without
    any (a merged/base state) leaves the LoRA initialisation (B = 0: no change) in place. Every other
    trainable tensor of the model must be present.
    """
    targets = nn.Module.state_dict(model, keep_vars=True)
    by_plain: dict[tuple[str, str], str] = {}
    for k in targets:
        role = peft_role(k) if k.startswith(PEFT_LM_PREFIX) else "base"
        by_plain[(plain_name(k), role)] = k
    assignments: dict[str, torch.Tensor] = {}
    unexpected, shapes, released = [], [], []
    for key, value in state.items():
        try:
            plain, role = _reference_key_info(key)
        except UnknownKeyError as e:
            unexpected.append(str(e))
            continue
        if role == "copy?":
            role = "copy" if (plain, "copy") in by_plain else "base"
        un_peft = not key.startswith(REFERENCE_MARKER + "language_model.base_model.")
        original_released = (plain, "copy") in by_plain and (plain, "base") not in by_plain
        if role == "base" and original_released and ".original_module." in key:
            released.append(key)  # the frozen original: the model keeps only the trained copy
            continue
        dests = [by_plain.get((plain, role))]
        if role == "base" and (plain, "copy") in by_plain and un_peft:
            dests.append(by_plain[(plain, "copy")])  # an un-PEFT state also defines the trained copy
            if original_released:
                dests = dests[1:]
        if dests[0] is None:
            unexpected.append(f"{key!r} (no model tensor {plain!r} with role {role})")
            continue
        for d in dests:
            if tuple(value.shape) != tuple(targets[d].shape):
                shapes.append(f"{key!r}: {list(value.shape)} vs model {d!r} {list(targets[d].shape)}")
            else:
                assignments[d] = value
        rows_key = by_plain.get((plain, "tokens_delta"))
        if role == "base" and rows_key is not None and un_peft and dests[0] in assignments:
            # An un-PEFT state also defines the trained rows: its rows of the trained token ids.
            layer = model.get_submodule(rows_key.rsplit(".trainable_tokens_delta.", 1)[0])
            index = torch.tensor(layer.token_indices[rows_key.rsplit(".", 1)[-1]], dtype=torch.long)
            assignments[rows_key] = value.index_select(0, index.to(value.device))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    has_lora = any(peft_role(d).startswith("lora") for d in assignments)
    missing = sorted(
        k for k in trainable - set(assignments) if has_lora or not peft_role(k).startswith("lora")
    )
    if unexpected or shapes or missing:
        header = f"{source}: reference-style state does not match the model:"
        raise CheckpointMismatchError(
            mismatch_message(
                header,
                unexpected,
                missing,
                shapes,
                unexpected_what="unexpected",
                missing_what="trainable tensor(s) missing",
            )
        )
    with torch.no_grad():
        for d, v in assignments.items():
            targets[d].copy_(v)
    MMLogger.get_current_instance().info(
        f"Loaded {len(assignments)} tensors from reference-style {source}"
        + ("" if has_lora else " (no LoRA factors in it: LoRA starts from its initialisation)")
        + (
            f"; skipped {len(released)} frozen original(s) the model released, e.g. {released[0]!r}"
            if released
            else ""
        )
    )
    return len(assignments)


def hf_folder_to_reference_pth(hf_dir: str | Path, out_file: str | Path) -> int:
    """Write an official HF folder's weights as a reference-style full state ``{'state_dict': ...}``.

    Names: ``mllm.model.vision_model.*``, ``mllm.model.mlp1.*``, ``mllm.model.language_model.*`` (plain,
    no LoRA), ``grounding_encoder.sam2_model.*`` (``gamma``), ``text_hidden_fcs.*``. The tensors are read
    one at a time; ``torch.save`` needs them all, so the process holds one copy of the weights.
    Returns the count.
    """
    state: dict[str, torch.Tensor] = {}
    for file in hf_weight_files(hf_dir):
        with safe_open(str(file), framework="pt") as f:
            for key in list(f.keys()):
                state[REFERENCE_PTH_TABLE.to_format(HF_KEY_TABLE.to_model(key))] = f.get_tensor(key)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, str(out_file))
    return len(state)
