"""The saved-for-backward counter of activations.py: grouping, storage dedup, per-sample sums."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.official.activations import SavedByModule, group_of, per_sample, report


def test_group_of_names_of_both_sides():
    kit = "mllm.language_model.base_model.model.model.layers.3"
    off = "mllm.model.language_model.base_model.model.model.layers.3"
    for prefix in (kit, off):
        assert group_of(f"{prefix}.self_attn.q_proj.base_layer") == "llm.attention"
        assert group_of(f"{prefix}.self_attn.q_proj.lora_A.default") == "llm.lora"
        assert group_of(f"{prefix}.mlp.down_proj.lora_dropout.default") == "llm.lora_dropout"
        assert group_of(f"{prefix}.mlp.act_fn") == "llm.mlp"
        assert group_of(f"{prefix}.input_layernorm") == "llm.norm"
        assert group_of(prefix) == "llm.layer"
    assert group_of("mllm.language_model.base_model.model.model") == "llm.checkpoint"
    assert group_of("mllm.model.language_model.base_model.model.model") == "llm.checkpoint"
    assert group_of("mllm.language_model.base_model.model.lm_head.modules_to_save.default") == "llm.head"
    assert group_of("mllm.model.language_model.base_model.model.model.norm") == "llm.other"
    assert group_of("mllm.model.vision_model.encoder.layers.0.attn") == "vision"
    assert group_of("mllm.mlp1.1") == "mlp1"
    assert group_of("grounding_encoder.sam2_model.sam_mask_decoder.conv_s0") == "sam2.mask_decoder"
    assert group_of("grounding_encoder.sam2_model.image_encoder.trunk") == "sam2.image_encoder"
    assert group_of("loss_mask") == "top (losses, glue)"
    assert group_of("") == "top (losses, glue)"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.lora_dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))  # fc saves x (x is not a parameter); relu saves its output h
        v = h.view(-1)  # a view of h: sin saves it, the same storage, counted once
        return v.sin().sum() + self.lora_dropout(x).sum()


def test_counts_distinct_non_parameter_storages_per_innermost_module():
    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(3, 8, requires_grad=True)
    with SavedByModule(net) as s:
        net(x)
    got = {(m, d): b for m, d, b in s.result()["bytes"]}
    # fc: x (3*8 fp32); top level: relu's output (3*16) once, though sin saves a view of it too;
    # dropout on the host saves its fp32 noise (3*8), not a bool mask.
    assert got == {
        ("fc", "float32"): 3 * 8 * 4,
        ("", "float32"): 3 * 16 * 4,
        ("lora_dropout", "float32"): 3 * 8 * 4,
    }
    numel = {(m, d): n for m, d, n in s.result()["numel"]}
    assert numel[("lora_dropout", "float32")] == 3 * 8


def test_host_dropout_saves_input_dtype_noise_under_autocast():
    """The fact ``per_sample(cuda_dropout=True)`` corrects for: on the host, dropout of a bf16 tensor saves
    a bf16 tensor of the input's size (CUDA's native_dropout saves a bool mask)."""
    m = nn.ModuleDict({"lora_dropout": nn.Dropout(0.05)}).train()
    x = torch.randn(4, 32, dtype=torch.bfloat16, requires_grad=True)
    with SavedByModule(m) as s:
        m["lora_dropout"](x)
    assert s.result()["bytes"] == [["lora_dropout", "bfloat16", 4 * 32 * 2]]
    assert F.dropout(x, 0.05, training=True).dtype == torch.bfloat16


LAYER = "mllm.language_model.base_model.model.model.layers.0"
MLP, DROP, HEAD = f"{LAYER}.mlp.act_fn", f"{LAYER}.mlp.down_proj.lora_dropout.default", "mllm.lm_head"


def _res(b1: dict, b2: dict) -> dict:
    def rows(d, div=1):
        return [[m, dt, v // div] for (m, dt), v in d.items()]

    return {
        "1": {"bytes": rows(b1), "numel": rows(b1, 4)},
        "2": {"bytes": rows(b2), "numel": rows(b2, 4)},
        "tokens_2": 10,
        "checkpointing": False,
    }


def test_per_sample_and_report_scale_layer_groups():
    mib = 2**20
    res = _res(
        {(MLP, "bfloat16"): 10 * mib, (DROP, "float32"): 4 * mib, (HEAD, "bfloat16"): mib},
        {(MLP, "bfloat16"): 30 * mib, (DROP, "float32"): 8 * mib, (HEAD, "bfloat16"): mib},
    )
    assert per_sample(res, 1, 2) == {
        ("llm.head", "bfloat16"): 0,
        ("llm.lora_dropout", "float32"): 4 * mib,
        ("llm.mlp", "bfloat16"): 20 * mib,
    }
    assert per_sample(res, 1, 2, cuda_dropout=True)[("llm.lora_dropout", "float32")] == mib
    lines = report({"a": res}, 1, 2, llm_layers=2, full_layers=36)
    mlp = next(x for x in lines if x.startswith("llm.mlp"))
    assert mlp.split()[1:3] == ["20.0", "|"] and float(mlp.split()[3]) == round(20 * 18 / 1024, 3)
    assert not any(x.startswith("llm.head") for x in lines)  # no per-sample bytes
