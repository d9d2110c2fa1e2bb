"""InternLM2: equal to transformers' Llama on the same (re-packed) weights, cache, generate, checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from projects.sa2va.models.internlm2 import InternLM2Config, InternLM2ForCausalLM

DIMS = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    rope_theta=1e6,
)


def _pair(rope_scaling=None) -> tuple[InternLM2ForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(0)
    m = InternLM2ForCausalLM(InternLM2Config(**DIMS, rope_scaling=rope_scaling)).eval()
    lcfg = LlamaConfig(**DIMS, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_scaling=rope_scaling)
    llama = LlamaForCausalLM(lcfg).eval()
    hd, nkv, groups, h = 16, 2, 2, 64
    renames = {
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "tok_embeddings": "embed_tokens",
        "output.": "lm_head.",
    }
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith("wqkv.weight"):  # rows per KV head: its query heads, then k, then v
            p = k.removesuffix("attention.wqkv.weight") + "self_attn."
            w = v.view(nkv, groups + 2, hd, h)
            sd[p + "q_proj.weight"] = w[:, :groups].reshape(-1, h)
            sd[p + "k_proj.weight"] = w[:, groups].reshape(-1, h)
            sd[p + "v_proj.weight"] = w[:, groups + 1].reshape(-1, h)
            continue
        for a, b in renames.items():
            k = k.replace(a, b)
        sd[k] = v
    llama.load_state_dict(sd, strict=True)
    return m, llama


@pytest.mark.parametrize("rope_scaling", [None, {"type": "dynamic", "factor": 2.0}])
def test_matches_llama_with_padding_and_long_sequences(rope_scaling):
    m, llama = _pair(rope_scaling)
    ids = torch.randint(0, 100, (2, 40))  # longer than max_position_embeddings: dynamic NTK active
    am = torch.ones_like(ids)
    am[1, :5] = 0
    with torch.no_grad():
        a = m(ids, attention_mask=am, output_hidden_states=True)
        b = llama(ids, attention_mask=am, output_hidden_states=True)
    torch.testing.assert_close(a.logits[0], b.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits[1, 5:], b.logits[1, 5:], atol=1e-5, rtol=1e-5)
    assert len(a.hidden_states) == DIMS["num_hidden_layers"] + 1
    torch.testing.assert_close(a.hidden_states[-1][1, 5:], b.hidden_states[-1][1, 5:], atol=1e-5, rtol=1e-5)


def test_dynamic_rope_changes_only_beyond_max_positions():
    plain, _ = _pair(None)
    dyn, _ = _pair({"type": "dynamic", "factor": 2.0})
    dyn.load_state_dict(plain.state_dict())
    short, long = torch.randint(0, 100, (1, 20)), torch.randint(0, 100, (1, 40))
    with torch.no_grad():
        assert torch.equal(plain(short).logits, dyn(short).logits)
        assert (plain(long).logits - dyn(long).logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        InternLM2Config(**DIMS, rope_scaling={"type": "yarn", "factor": 2.0})


def test_kv_cache_and_generate_match_full_forward():
    m, llama = _pair()
    ids = torch.randint(0, 100, (2, 12))
    am = torch.ones_like(ids)
    am[1, :3] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = m(ids, attention_mask=am, position_ids=pos).logits
        first = m(ids[:, :7], attention_mask=am[:, :7], position_ids=pos[:, :7], use_cache=True)
        rest = m(
            ids[:, 7:], attention_mask=am, position_ids=pos[:, 7:], past_key_values=first.past_key_values
        )
    torch.testing.assert_close(rest.logits, full[:, 7:], atol=1e-5, rtol=1e-5)
    kw = dict(attention_mask=am, max_new_tokens=6, do_sample=False, pad_token_id=0)
    out = m.generate(ids, **kw)
    assert torch.equal(out, llama.generate(ids, **kw))
    embeds = m.get_input_embeddings()(ids)
    assert torch.equal(m.generate(inputs_embeds=embeds, **kw), out[:, ids.shape[1] :])


def test_gradient_checkpointing_and_resize():
    m, _ = _pair()
    ids = torch.randint(0, 100, (2, 10))
    m.train()
    m(ids, labels=ids).loss.backward()
    ref = m.model.layers[0].attention.wqkv.weight.grad.clone()
    m.zero_grad()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert m.model.gradient_checkpointing
    m(ids, labels=ids).loss.backward()
    torch.testing.assert_close(m.model.layers[0].attention.wqkv.weight.grad, ref)
    m.resize_token_embeddings(110, mean_resizing=False)
    assert m.get_input_embeddings().weight.shape == (110, 64) and m.output.weight.shape == (110, 64)
