"""Key tables: one per checkpoint format, mapping its tensor names to :class:`Sa2VAModel` names and back.

A key table is a list of prefix rules and leaf renames, applied explicitly; a key no rule covers is an
error naming it. The model-side names are the *plain* names, i.e. those of ``Sa2VAModel`` before LoRA is
applied (``mllm.language_model.model.layers.0.self_attn.q_proj.weight``), which is when base weights
are loaded; the PEFT names after LoRA are handled by :func:`plain_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "HF_KEY_TABLE",
    "HF_KEY_TABLES",
    "LM_PREFIX",
    "PEFT_LM_PREFIX",
    "QWENVL_HF_KEY_TABLE",
    "REFERENCE_PTH_TABLE",
    "KeyTable",
    "UnknownKeyError",
    "hf_key_table",
    "peft_role",
    "plain_name",
]

LM_PREFIX = "mllm.language_model."
PEFT_LM_PREFIX = "mllm.language_model.base_model.model."
ADAPTER = "default"


class UnknownKeyError(KeyError):
    """A tensor name that no rule of a key table covers."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class KeyTable:
    """Name mapping between one checkpoint format and the model.

    Attributes:
        name: format name, used in error messages.
        prefixes: ``(format_prefix, model_prefix)`` pairs, first match wins (both directions).
        leaf_renames: ``(format_leaf, model_leaf)`` pairs for the last name component, e.g. SAM2's
            memory-fuser layer scale stored as ``g_weight`` but named ``gamma`` in ``sam2``.
    """

    name: str
    prefixes: tuple[tuple[str, str], ...]
    leaf_renames: tuple[tuple[str, str], ...] = ()

    def _convert(self, key: str, forward: bool) -> str:
        src, dst = (0, 1) if forward else (1, 0)
        for rule in self.prefixes:
            if key.startswith(rule[src]):
                out = rule[dst] + key[len(rule[src]) :]
                break
        else:
            side = f"{self.name} checkpoint" if forward else "model"
            known = [r[src] for r in self.prefixes]
            raise UnknownKeyError(
                f"{side} key {key!r} matches no prefix of the {self.name} key table {known}"
            )
        head, _, leaf = out.rpartition(".")
        for rename in self.leaf_renames:
            if leaf == rename[src]:
                return f"{head}.{rename[dst]}" if head else rename[dst]
        return out

    def to_model(self, key: str) -> str:
        """Checkpoint key -> plain model key (raises :class:`UnknownKeyError`)."""
        return self._convert(key, forward=True)

    def to_format(self, key: str) -> str:
        """Plain model key -> checkpoint key (raises :class:`UnknownKeyError`)."""
        return self._convert(key, forward=False)


_SAM2_GAMMA = (("g_weight", "gamma"),)

#: The official Sa2VA Hugging Face folder (``Sa2VAChatModel``): both LLM families use it, because each
#: family adapter builds its LM with the family's official module names.
HF_KEY_TABLE = KeyTable(
    name="official Sa2VA HF",
    prefixes=(
        ("vision_model.", "mllm.vision_model."),
        ("mlp1.", "mllm.mlp1."),
        ("language_model.", "mllm.language_model."),
        ("grounding_encoder.sam2_model.", "grounding_encoder.sam2_model."),
        ("text_hidden_fcs.", "text_hidden_fcs."),
    ),
    leaf_renames=_SAM2_GAMMA,
)

#: The official Sa2VA Qwen-VL folder (``Sa2VAChatModelQwen``): the whole transformers
#: ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` under ``model.`` (its own
#: ``model.visual`` / ``model.language_model`` / ``lm_head``); SAM2 and the projector as in InternVL folders.
QWENVL_HF_KEY_TABLE = KeyTable(
    name="official Sa2VA Qwen-VL HF",
    prefixes=(
        ("model.model.visual.", "mllm.vision_model."),
        ("model.model.language_model.", "mllm.language_model.model."),
        ("model.lm_head.", "mllm.language_model.lm_head."),
        ("grounding_encoder.sam2_model.", "grounding_encoder.sam2_model."),
        ("text_hidden_fcs.", "text_hidden_fcs."),
    ),
    leaf_renames=_SAM2_GAMMA,
)

#: ``checkpoint_layout`` of an MLLM adapter class -> the key table of its official HF folders.
HF_KEY_TABLES: dict[str, KeyTable] = {"internvl": HF_KEY_TABLE, "qwen_vl": QWENVL_HF_KEY_TABLE}


def hf_key_table(mllm: object) -> KeyTable:
    """The official-folder key table of an MLLM adapter (by its declared ``checkpoint_layout``)."""
    layout = getattr(mllm, "checkpoint_layout", None)
    if layout not in HF_KEY_TABLES:
        raise ValueError(
            f"{type(mllm).__name__}: checkpoint_layout {layout!r} has no key table "
            f"(known: {sorted(HF_KEY_TABLES)})"
        )
    return HF_KEY_TABLES[layout]


#: The reference (bytedance/Sa2VA) training model's ``state_dict``: ``mllm.model.`` is its InternVL chat
#: model; SAM2 keeps ``gamma``. PEFT infixes (LoRA, modules_to_save) are resolved by :func:`plain_name`.
REFERENCE_PTH_TABLE = KeyTable(
    name="reference Sa2VA .pth",
    prefixes=(
        ("mllm.model.vision_model.", "mllm.vision_model."),
        ("mllm.model.mlp1.", "mllm.mlp1."),
        ("mllm.model.language_model.", "mllm.language_model."),
        ("grounding_encoder.sam2_model.", "grounding_encoder.sam2_model."),
        ("text_hidden_fcs.", "text_hidden_fcs."),
    ),
)

_LORA_RE = re.compile(
    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.[^.]+)?\."
)


#: PEFT ``trainable_token_indices`` (``TrainableTokensWrapper``) tensors of a module ``X``:
#: ``X.token_adapter.base_layer.weight`` (the frozen base),
#: ``X.token_adapter.trainable_tokens_delta.<adapter>`` (the trained rows, ``[n_tokens, H]``) and
#: ``X.token_adapter.trainable_tokens_original.<adapter>`` (their initial values).
_TOKENS_RE = re.compile(r"\.token_adapter\.(base_layer\.weight|trainable_tokens_(delta|original)\.[^.]+)$")


def peft_role(key: str) -> str:
    """Role of a (possibly PEFT-wrapped) LM tensor name.

    Returns one of ``'lora_A'``, ``'lora_B'`` (or another ``lora_*`` kind), ``'copy'`` (the trained
    ``modules_to_save`` copy), ``'tokens_delta'`` / ``'tokens_original'`` (the trained rows of a
    ``trainable_token_indices`` module / their initial values), ``'base'`` (the frozen base weight:
    ``base_layer`` / ``original_module`` or an unwrapped name).
    """
    m = _LORA_RE.search(key)
    if m:
        return m.group(1)
    if ".modules_to_save." in key:
        return "copy"
    m = _TOKENS_RE.search(key)
    if m and m.group(2):
        return f"tokens_{m.group(2)}"
    return "base"


def plain_name(key: str) -> str:
    """Strip PEFT wrapping from a model key: the name the tensor has in the model without LoRA.

    ``mllm.language_model.base_model.model.X.q_proj.base_layer.weight`` ->
    ``mllm.language_model.X.q_proj.weight``;
    ``...embed_tokens.modules_to_save.default.weight`` and ``...embed_tokens.original_module.weight`` ->
    ``...embed_tokens.weight``; LoRA factors ``...q_proj.lora_A.default.weight`` -> ``...q_proj.weight``
    (the weight they adapt); ``...embed_tokens.token_adapter.base_layer.weight`` and
    ``...embed_tokens.token_adapter.trainable_tokens_delta.default`` -> ``...embed_tokens.weight``. Keys
    outside the LM are returned unchanged.
    """
    if not key.startswith(PEFT_LM_PREFIX):
        return key
    inner = key[len(PEFT_LM_PREFIX) :]
    m = _LORA_RE.search(inner) or _TOKENS_RE.search(inner)
    if m:
        inner = inner[: m.start()] + ".weight"
    else:
        inner = re.sub(r"\.modules_to_save\.[^.]+\.", ".", inner)
        inner = inner.replace(".original_module.", ".").replace(".base_layer.", ".")
    return LM_PREFIX + inner
