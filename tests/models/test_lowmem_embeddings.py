"""``lora=dict(train_embeddings='new_tokens')``: only the rows of Sa2VA's added tokens of the input embedding
and the LM head train (PEFT ``trainable_token_indices``), end to end (issue 19, memory).

On the tiny official-layout folders of both InternVL LLM families (Qwen2 with its byte-level BPE tokenizer,
InternLM2 with its sentencepiece tokenizer): training changes exactly those rows; the trainable checkpoint
round-trips strictly; the merged export writes the trained rows into the official embedding / head tensors,
reloads strictly and gives the same logits and mask logits; the adapter-only export loads onto the base;
``projects/sa2va/configs/sa2va_4b_lowmem.py`` differs from the 4B reference config only there; a run
killed mid-epoch resumes to the same losses.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors import safe_open

from projects.sa2va.checkpoint.hf_sa2va import load_adapter_export
from projects.sa2va.checkpoint.safe_load import load_checkpoint_file, trainable_state_from_checkpoint
from projects.sa2va.checkpoint.trainable_pth import load_trainable_checkpoint
from projects.sa2va.configs import config_path
from projects.sa2va.engine.builder import construct_model
from projects.sa2va.engine.export import convert_to_hf
from projects.sa2va.engine.hooks import read_loss_records
from projects.sa2va.models.tokenizer import SPECIAL_TOKENS
from tests.checkpoint.hf_fixture import model_cfg, write_official_folder
from tests.checkpoint.test_hf_sa2va import folder_keys, make_batch, outputs
from tests.procs import start_tiny_fault_training

FAMILIES = ("qwen2", "internlm2")
LOWMEM = dict(r=8, alpha=16, dropout=0.0, train_embeddings="new_tokens")
STEPS = 3


def build(folder: Path, family: str, seed: int = 0, **overrides):
    cfg = model_cfg(folder, family)
    cfg.model.update(overrides)
    torch.manual_seed(seed)
    return construct_model(cfg.model), cfg


def merged_rows(model) -> dict[str, torch.Tensor]:
    """The embedding and head weights ``[V, H]`` as the forward uses them (trained rows written in)."""
    lm = model.mllm.base_llm()
    return {
        "embed": lm.get_input_embeddings().weight.detach().clone(),
        "head": lm.get_output_embeddings().weight.detach().clone(),
    }


def folder_tensor(folder: Path, key: str) -> torch.Tensor:
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            if key in h.keys():  # noqa: SIM118
                return h.get_tensor(key)
    raise KeyError(f"{key} not in {folder}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {fam: write_official_folder(root / fam, fam, seed=3) for fam in FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, folders, tmp_path_factory):
    """Build with new_tokens, train ``STEPS`` AdamW steps, save the trainable checkpoint."""
    family = request.param
    model, cfg = build(folders[family], family, seed=1, lora=LOWMEM)
    before = merged_rows(model)
    base_before = {
        k: v.detach().clone()
        for k, v in torch.nn.Module.state_dict(model).items()
        if k.endswith(".token_adapter.base_layer.weight")
    }
    batch = make_batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(STEPS):
        loss = sum(model(batch, mode="loss").values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = tmp_path_factory.mktemp(f"ckpt_{family}") / f"iter_{STEPS}.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return dict(
        family=family, model=model, cfg=cfg, batch=batch, ckpt=ckpt, before=before, base_before=base_before
    )


def test_only_the_new_token_rows_train(trained):
    model = trained["model"]
    tok = model.tokenizer
    ids = model.mllm.new_token_ids()
    assert ids == sorted(tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)
    hidden = model.mllm.hidden_size
    llm_trainable = {
        n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad and ".language_model." in n
    }
    rows = {n: s for n, s in llm_trainable.items() if "lora_" not in n}
    fam = model.mllm.family
    assert sorted(rows) == sorted(
        f"mllm.language_model.base_model.model.{m}.token_adapter.trainable_tokens_delta.default"
        for m in (f"model.{fam.embed_module}", fam.head_module)
    ), rows
    assert set(rows.values()) == {(len(SPECIAL_TOKENS), hidden)}
    # The frozen base weights are untouched; the forward's weights differ from them only in the trained rows.
    for k, v in trained["base_before"].items():
        assert torch.equal(torch.nn.Module.state_dict(model)[k], v), k
    after = merged_rows(model)
    seg = tok.convert_tokens_to_ids("[SEG]")
    others = torch.ones(after["embed"].shape[0], dtype=torch.bool)
    others[ids] = False
    for part in ("embed", "head"):
        assert torch.equal(after[part][others], trained["before"][part][others]), part
        assert not torch.equal(after[part][seg], trained["before"][part][seg]), (
            f"{part}: [SEG] row did not train"
        )


def test_trainable_checkpoint_round_trips_strictly(trained, folders):
    family, model, batch = trained["family"], trained["model"], trained["batch"]
    state = torch.load(trained["ckpt"], weights_only=True)["state_dict"]
    assert sorted(state) == sorted(model.trainable_keys())
    fresh, _ = build(folders[family], family, seed=5, lora=LOWMEM)
    load_trainable_checkpoint(fresh, trained["ckpt"])
    a, b = outputs(model, batch), outputs(fresh, batch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # A checkpoint of the other recipes does not fit: strict loading names the keys.
    full, _ = build(folders[family], family, seed=5, lora=dict(LOWMEM, train_embeddings=True))
    with pytest.raises(KeyError, match=r"2 missing .*2 unexpected"):
        full.load_state_dict(state, strict=True)
    partial = {k: v for k, v in state.items() if "trainable_tokens_delta" not in k}
    with pytest.raises(KeyError, match="2 missing"):
        fresh.load_state_dict(partial, strict=True)


def test_export_merges_the_trained_rows_and_predicts_the_same(trained, folders, tmp_path):
    family, model, batch = trained["family"], trained["model"], trained["batch"]
    src = folders[family]
    ref_logits, ref_masks = outputs(model, batch)
    out = tmp_path / "export"
    convert_to_hf(trained["cfg"], trained["ckpt"], out, max_shard_size="200KB")
    assert folder_keys(out) == folder_keys(src)  # the official names and shapes, nothing extra
    fam = model.mllm.family
    ids = model.mllm.new_token_ids()
    trained_rows = merged_rows(model)
    for part, key in (
        ("embed", f"language_model.model.{fam.embed_module}.weight"),
        ("head", f"language_model.{fam.head_module}.weight"),
    ):
        exported, source = folder_tensor(out, key), folder_tensor(src, key)
        others = torch.ones(exported.shape[0], dtype=torch.bool)
        others[ids] = False
        assert torch.equal(exported[others], source[others].to(exported.dtype)), key
        assert torch.equal(exported[ids], trained_rows[part][ids].to(exported.dtype)), key
    # The export loads strictly (the loader rejects any missing / extra tensor) and predicts the same,
    # into the official recipe's layout and into this one.
    for lora in (dict(LOWMEM, train_embeddings=True), LOWMEM):
        reloaded, _ = build(out, family, seed=7, lora=lora)
        logits, masks = outputs(reloaded, batch)
        assert (logits - ref_logits).abs().max() < 1e-5
        assert (masks - ref_masks).abs().max() < 1e-5


def test_predictor_on_the_export_equals_the_predictor_on_the_checkpoint(trained, folders, tmp_path):
    """``predict.py --hf EXPORT`` vs ``predict.py --hf SOURCE --checkpoint CKPT`` (new_tokens): greedy
    answer ids and mask probabilities."""
    import numpy as np

    from projects.sa2va.inference.predictor import Sa2VAPredictor
    from tests.tiny import TINY_MODEL_CFG

    family = trained["family"]
    out = tmp_path / "export"
    convert_to_hf(trained["cfg"], trained["ckpt"], out)
    tiny = Config.fromfile(str(TINY_MODEL_CFG))
    on_ckpt = Sa2VAPredictor.from_hf(
        folders[family],
        trained["ckpt"],
        cfg_options={
            "model.grounding_encoder.overrides": tiny.tiny_sam2_overrides,
            "model.mllm.torch_dtype": "float32",  # as the trained model (the source folder says bfloat16)
            "model.lora": LOWMEM,
        },
        max_tiles=1,
    )
    assert any("trainable_tokens_delta" in k for k in on_ckpt.model.trainable_keys())
    # The export keeps the source's config.json `torch_dtype` (bfloat16) while its tensors are the trained
    # model's float32: build both in float32.
    on_export = Sa2VAPredictor.from_hf(out, cfg_options={"model.mllm.torch_dtype": "float32"}, max_tiles=1)
    assert on_export.autocast_dtype is None and on_ckpt.autocast_dtype is None
    image = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    question = "Please segment the blood vessel."
    a = on_ckpt.predict([image], question, max_new_tokens=4)[0]
    b = on_export.predict([image], question, max_new_tokens=4)[0]
    assert a.token_ids == b.token_ids
    assert a.probs.shape == b.probs.shape
    assert np.abs(np.asarray(a.probs, dtype=np.float64) - np.asarray(b.probs, dtype=np.float64)).max() < 1e-5


def test_adapter_only_export_loads_onto_the_base(trained, folders, tmp_path):
    family, model, batch = trained["family"], trained["model"], trained["batch"]
    ref_logits, ref_masks = outputs(model, batch)
    out = tmp_path / "adapter"
    convert_to_hf(trained["cfg"], trained["ckpt"], out, adapter_only=True)
    base, _ = build(folders[family], family, seed=9, trainable=dict(llm="frozen"))
    load_adapter_export(base, out)
    logits, masks = outputs(base, batch)
    assert (logits - ref_logits).abs().max() < 1e-5
    assert (masks - ref_masks).abs().max() < 1e-5


def test_unknown_train_embeddings_value_is_refused(folders):
    with pytest.raises(ValueError, match="train_embeddings must be one of"):
        build(folders["qwen2"], "qwen2", lora=dict(LOWMEM, train_embeddings="rows"))


def _flat(cfg: Config) -> dict:
    def walk(obj, prefix=""):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                out.update(walk(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): repr(obj)}

    return walk(cfg.to_dict())


def test_lowmem_config_differs_from_the_4b_reference_only_in_the_embedding_rows():
    low = Config.fromfile(str(config_path("sa2va_4b_lowmem")))
    ref = Config.fromfile(str(config_path("sa2va_4b_random")))
    assert low.model.lora.train_embeddings == "new_tokens"
    a, b = _flat(low), _flat(ref)
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert diff == ["model.lora.train_embeddings"], diff


# --- resume --------------------------------------------------------------------------------------------
NEW_TOKENS = ("model.lora.train_embeddings=new_tokens",)


def _train(work_dir: Path, *extra: str, log: str, cfg_options: tuple[str, ...] = ()) -> subprocess.Popen:
    return start_tiny_fault_training(work_dir, *extra, log=log, cfg_options=NEW_TOKENS + cfg_options)


@pytest.mark.slow
def test_new_tokens_run_killed_then_resumed_reproduces_losses(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir(), run_dir.mkdir()
    ref = _train(ref_dir, log="reference.log")
    killed = _train(run_dir, log="killed.log", cfg_options=("custom_hooks.0.at=3",))
    rc_killed = killed.wait(timeout=300)
    assert rc_killed == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    state = trainable_state_from_checkpoint(load_checkpoint_file(run_dir / "iter_2.pth"))
    assert sum("trainable_tokens_delta" in k for k in state) == 2
    assert not any("modules_to_save" in k for k in state)
    resumed = _train(run_dir, "--resume", "auto", log="resumed.log")
    for name, proc in (("resumed", resumed), ("reference", ref)):
        rc = proc.wait(timeout=300)
        assert rc == 0, f"{name} run failed:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
    assert "resuming at iteration 2" in (tmp_path / "resumed.log").read_text()
    expected = read_loss_records(ref_dir / "train_losses.jsonl")
    got = read_loss_records(run_dir / "train_losses.jsonl")
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for it in expected:
        for key in ("loss", "loss_lm", "loss_mask"):
            assert got[it][key] == expected[it][key], f"iteration {it} {key}"


def test_lowmem_config_at_tiny_shapes_takes_a_training_step():
    from xtuner.registry import BUILDER

    from projects.sa2va.datasets.collate import sa2va_collate
    from tests.configs.test_configs import shrink_to_tiny

    cfg = Config.fromfile(str(config_path("sa2va_4b_lowmem")))
    shrink_to_tiny(cfg)
    cfg.model.lora.train_embeddings = "new_tokens"
    cfg.model.init_device = None
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    assert any("trainable_tokens_delta" in k for k in model.trainable_keys())
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    losses = model(**model.data_preprocessor(sa2va_collate([dataset[0], dataset[1]]), True), mode="loss")
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwenvl_families_train_only_the_rows_and_export_them(family, tmp_path):
    """The Qwen-VL adapters (text decoder ``embed_tokens`` / ``lm_head``) on their tiny official-layout
    folders: only the added tokens' rows change; the merged export reloads to the same mask logits."""
    from projects.sa2va.checkpoint.hf_sa2va import export_hf_folder
    from tests.checkpoint import qwenvl_fixture
    from tests.checkpoint.test_qwenvl_families import build as build_qwenvl
    from tests.checkpoint.test_qwenvl_families import dataset as qwenvl_dataset
    from tests.models.test_sa2va_training import batch_of, train_steps

    src = qwenvl_fixture.write_official_folder(tmp_path / "src", family, seed=3)
    model, _ = build_qwenvl(src, family, seed=1, lora=LOWMEM)
    ids = model.mllm.new_token_ids()
    before = merged_rows(model)
    batch = batch_of(qwenvl_dataset(src, family, objects_per_image=1), [0])
    train_steps(model, batch, steps=2, lr=1e-2)
    after = merged_rows(model)
    for part in ("embed", "head"):
        changed = (after[part] != before[part]).any(dim=1).nonzero().flatten().tolist()
        assert changed and set(changed) <= set(ids), (part, changed, ids)
    out = tmp_path / "export"
    export_hf_folder(model, out)
    assert qwenvl_fixture.folder_tensors(out).keys() == qwenvl_fixture.folder_tensors(src).keys()
    reloaded, _ = build_qwenvl(out, family, seed=7)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        trained, again = model(batch, mode="tensor"), reloaded(batch, mode="tensor")
    torch.testing.assert_close(again["mask_logits"], trained["mask_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(again["logits"], trained["logits"], rtol=0, atol=1e-5)


def test_key_tables_name_the_trainable_token_tensors():
    from projects.sa2va.checkpoint.key_tables import peft_role, plain_name

    lm = "mllm.language_model.base_model.model."
    emb = lm + "model.embed_tokens.token_adapter."
    assert peft_role(emb + "base_layer.weight") == "base"
    assert peft_role(emb + "trainable_tokens_delta.default") == "tokens_delta"
    assert peft_role(lm + "lm_head.token_adapter.trainable_tokens_original.default") == "tokens_original"
    for key in ("base_layer.weight", "trainable_tokens_delta.default"):
        assert plain_name(emb + key) == "mllm.language_model.model.embed_tokens.weight"
    assert plain_name(lm + "lm_head.token_adapter.base_layer.weight") == "mllm.language_model.lm_head.weight"
