"""Inference-test fixtures: a tiny Sa2VA briefly overfit (in-process, fixed seed) to answer with [SEG].

The random tiny model of ``_base_/model_tiny.py`` never generates ``[SEG]`` by itself; a few dozen
LM-loss steps on three (image, prompt) -> answer pairs make greedy decoding produce exactly those
answers, so the mask path of the predictor is really exercised:

* ``Image_01L`` (512x512, 1 tile) and ``Image_01R`` (512x512) -> ``Sure, [SEG].``
* a 512x200 crop of ``Image_01R`` (3 tiles: 2x1 + thumbnail), asked ``PROMPT_TWO``
  -> ``Sure, [SEG] and [SEG].``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL_CFG = ROOT / "projects/sa2va/configs/_base_/model_tiny.py"
IMAGES = ROOT / "data/chase_db1/images"
PROMPT = "Please segment the blood vessel."
MAX_TILES = 2  # 512x512 -> 1 tile, the 512x200 crop -> 2x1 + thumbnail; keeps sequences short
PROMPT_TWO = "Please segment the artery and the vein."
ONE_SEG = "Sure, [SEG]."
TWO_SEG = "Sure, [SEG] and [SEG]."


@dataclass
class Overfit:
    predictor: object  # Sa2VAPredictor
    images: dict[str, np.ndarray]
    prompts: dict[str, str]
    answers: dict[str, str]
    max_tiles: int


def load_rgb(name: str) -> np.ndarray:
    with Image.open(IMAGES / name) as im:
        return np.asarray(im.convert("RGB"))


def _overfit(
    predictor, samples: list[tuple[np.ndarray, str, str]], steps: int = 60, lr: float = 5e-3
) -> float:
    """LM-loss steps on ``samples`` (image, prompt, answer) with the predictor's prompt ids; returns the
    last loss."""
    model = predictor.model
    tok = predictor.tokenizer
    suffix = predictor.template["SUFFIX"]
    seqs, labels, tiles = [], [], []
    for image, prompt, answer in samples:
        prep = predictor.preprocess(image, prompt)
        ans = tok.encode(answer + suffix, add_special_tokens=False)
        seqs.append(prep.prompt_ids + ans)
        labels.append([-100] * len(prep.prompt_ids) + ans)
        tiles.append(prep.pixel_values)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), predictor.pad_token_id)
    lab = torch.full((len(seqs), length), -100)
    att = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (s, la) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], lab[i, : len(s)], att[i, : len(s)] = torch.tensor(s), torch.tensor(la), 1
    with torch.no_grad():
        vit_tokens = model.mllm.encode_vit(torch.cat(tiles))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        logits, _ = model.mllm(input_ids=ids, attention_mask=att, vit_tokens=vit_tokens)
        loss = model.lm_loss(logits, lab)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


@pytest.fixture(scope="session")
def overfit() -> Overfit:
    """The tiny Sa2VA overfit to answer with [SEG], in a predictor (built once per session)."""
    from projects.sa2va.inference.predictor import Sa2VAPredictor

    predictor = Sa2VAPredictor.from_config(TINY_MODEL_CFG, seed=0, max_tiles=MAX_TILES)
    images = {
        "01L": load_rgb("Image_01L.jpg"),
        "01R": load_rgb("Image_01R.jpg"),
        "crop": np.ascontiguousarray(load_rgb("Image_01R.jpg")[100:300]),  # 200x512
    }
    prompts = {"01L": PROMPT, "01R": PROMPT, "crop": PROMPT_TWO}
    answers = {"01L": ONE_SEG, "01R": ONE_SEG, "crop": TWO_SEG}
    torch.manual_seed(0)
    loss = _overfit(predictor, [(images[k], prompts[k], answers[k]) for k in images])
    assert loss < 0.1, f"overfitting the tiny model failed (LM loss {loss:.3f})"
    return Overfit(predictor=predictor, images=images, prompts=prompts, answers=answers, max_tiles=MAX_TILES)
