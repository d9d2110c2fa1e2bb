"""One model builder (``engine/builder.py``): the tiny demo's export is the trained model.

The tiny demo's frozen encoders are random (no file holds them), so its export is only right when the
export builds them from the seed training built them with. A few iterations of the demo config are
trained in process (``Sa2VARunner``, as ``tools/train.py`` builds it), the last checkpoint is exported
with ``tools/convert_to_hf.py`` and reloaded with ``Sa2VAPredictor.from_hf`` and ``from_config``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from safetensors import safe_open
from transformers import AutoTokenizer

from projects.sa2va.checkpoint.hf_sa2va import HFSa2VALoader, hf_weight_files
from projects.sa2va.checkpoint.key_tables import HF_KEY_TABLE
from projects.sa2va.cli import add_predictor_args, add_threshold_args, predictor_kwargs
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.engine.builder import build_model, resolve_seed
from projects.sa2va.inference.predictor import Sa2VAPredictor

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/chase_db1"
DEMO = ROOT / "projects/sa2va/configs/sa2va_tiny_demo.py"
IMAGES = ["Image_01L.jpg", "Image_01R.jpg"]
ITERS = 3


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``ITERS`` iterations of the tiny demo (2 images, batch 1, no validation), then its HF export."""
    from projects.sa2va.engine.runner import Sa2VARunner

    tmp = tmp_path_factory.mktemp("demo")
    records = [r for r in json.loads((DATA / "annotations_train.json").read_text()) if r["image"] in IMAGES]
    ann = tmp / "train.json"
    ann.write_text(json.dumps(records))
    cfg = Config.fromfile(str(DEMO))
    cfg.work_dir = str(tmp / "work")
    cfg.train_dataloader.batch_size = 1
    cfg.train_dataloader.dataset.update(ann_file=str(ann), objects_per_image=1)
    cfg.train_cfg.pop("max_epochs")
    cfg.train_cfg.update(max_iters=ITERS, val_interval=ITERS + 1)  # no validation
    cfg.default_hooks.checkpoint.update(interval=ITERS)
    cfg.default_hooks.checkpoint.pop("save_best")
    cfg.default_hooks.checkpoint.pop("rule")
    runner = Sa2VARunner.from_cfg(cfg)
    runner.train()
    model = runner.model.eval()
    ckpt = Path(cfg.work_dir) / f"iter_{ITERS}.pth"
    assert ckpt.is_file()
    export = tmp / "hf"
    load_tool("convert_to_hf").main([str(DEMO), str(ckpt), "--save-path", str(export)])
    dataset_cfg = cfg.train_dataloader.dataset
    return SimpleNamespace(model=model, ckpt=ckpt, export=export, dataset_cfg=dataset_cfg, ann=ann)


def batch_of(dataset_cfg) -> object:
    """A teacher-forced batch of both images (every object, no augmentation)."""
    from projects.sa2va.models.builder import build_component

    ds = dict(dataset_cfg)
    ds.update(objects_per_image=None, random_templates=False, augment=None, repeats=1)
    dataset = build_component(ds)
    return sa2va_collate([dataset[i] for i in range(len(dataset))])


@torch.no_grad()
def mask_logits(model, collated) -> torch.Tensor:
    """``[N, h, w]`` low-resolution mask logits of the teacher-forced forward."""
    batch = model.data_preprocessor(collated)["data"]
    return model.eval().forward_tensors(batch)["mask_logits"].float()


def test_rebuilt_from_config_and_checkpoint_equals_trained_model_exactly(trained):
    rebuilt = build_model(DEMO, trained.ckpt)
    trained_sd = torch.nn.Module.state_dict(trained.model)
    rebuilt_sd = torch.nn.Module.state_dict(rebuilt)
    assert trained_sd.keys() == rebuilt_sd.keys()
    for key, value in trained_sd.items():
        torch.testing.assert_close(rebuilt_sd[key], value, rtol=0, atol=0, msg=key)
    batch = batch_of(trained.dataset_cfg)
    ref = mask_logits(trained.model, batch)
    assert ref.shape[0] == 2 and ref.abs().max() > 0
    torch.testing.assert_close(mask_logits(rebuilt, batch), ref, rtol=0, atol=0)


def test_export_holds_the_trained_frozen_tensors_and_reproduces_its_masks(trained):
    """Every exported tensor outside the LoRA-merged LLM equals the trained model's bit for bit; the
    reloaded export's mask logits equal the trained model's up to the rounding of the LoRA merge."""
    trained_sd = {
        k: v
        for k, v in torch.nn.Module.state_dict(trained.model).items()
        if not k.startswith("mllm.language_model.")
    }
    compared = 0
    for shard in hf_weight_files(trained.export):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name.startswith("language_model."):
                    continue
                model_key = HF_KEY_TABLE.to_model(name)
                torch.testing.assert_close(
                    f.get_tensor(name), trained_sd[model_key], rtol=0, atol=0, msg=name
                )
                compared += 1
    # The random frozen encoders are among them (the ViT, SAM2's image encoder).
    assert compared > 100

    folder = str(trained.export)
    tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=folder)
    # The demo config builds its tokenizer and has no `load_weights`: point both at the folder.
    options = {"model.mllm.tokenizer": tokenizer, "model.load_weights": dict(type=HFSa2VALoader, path=folder)}
    predictor = Sa2VAPredictor.from_hf(folder, model_config=DEMO, cfg_options=options)
    batch = batch_of(trained.dataset_cfg)
    ref = mask_logits(trained.model, batch)
    got = mask_logits(predictor.model, batch)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-5  # the export's frozen parts alone once differed by 5.0


def test_seed_is_the_one_the_run_recorded(trained):
    ckpt = torch.load(trained.ckpt, weights_only=False)
    assert ckpt["meta"]["seed"] == 0
    cfg = Config.fromfile(str(DEMO))
    assert resolve_seed(cfg, {"seed": 5})[0] == 5  # the checkpoint's wins over the config's
    assert resolve_seed(cfg, None)[0] == 0
    cfg.randomness = dict(seed=None)
    assert resolve_seed(cfg, None)[0] == 0


def test_predict_and_demo_app_build_with_the_recorded_seed_by_default(trained, tmp_path):
    """``tools/predict.py`` / ``tools/demo_app.py`` without ``--seed`` rebuild the random parts as the run
    built them (the checkpoint's seed), as ``tools/test.py`` does; a ``--seed`` of 0 used to override it."""
    parser = argparse.ArgumentParser()
    add_threshold_args(parser, threshold_help="", file_help="")
    add_predictor_args(parser)
    kwargs = predictor_kwargs(parser.parse_args([]))
    assert kwargs["seed"] is None
    ckpt = torch.load(trained.ckpt, weights_only=False)
    ckpt["meta"]["seed"] = 3
    seeded = tmp_path / "seed3.pth"
    torch.save(ckpt, seeded)
    predictor = Sa2VAPredictor.from_config(DEMO, seeded, **kwargs)
    want = build_model(DEMO, seeded)  # the recorded seed, 3
    frozen = "grounding_encoder.sam2_model.image_encoder.trunk.patch_embed.proj.weight"
    got = dict(predictor.model.named_parameters())[frozen]
    assert torch.equal(got, dict(want.named_parameters())[frozen])
    zero = build_model(DEMO, seeded, seed=0)
    assert not torch.equal(got, dict(zero.named_parameters())[frozen])


def test_builder_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.py"):
        build_model(tmp_path / "missing.py")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_model(DEMO, tmp_path / "nowhere.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"not.a.key": torch.zeros(1)}}, wrong)
    with pytest.raises(KeyError, match=r"wrong\.pth"):
        build_model(DEMO, wrong)
