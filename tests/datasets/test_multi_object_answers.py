"""Several objects in one question: the ``"turns"`` of a record, from validation to a training step.

Real files: an RGB PNG image and masks written to a tmp folder, records through ``load_annotations``,
the tiny demo config's tokenizer and model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from projects.sa2va.datasets.annotations import (
    decode_record_masks,
    encode_mask_rle,
    record_turns,
    validate_record,
)
from projects.sa2va.datasets.collate import sa2va_collate
from projects.sa2va.datasets.refseg import RefSegDataset, answer_object_texts, join_texts
from projects.sa2va.models.builder import BUILDER

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "projects" / "sa2va" / "configs" / "sa2va_tiny_demo.py"
H, W = 64, 80


def _masks() -> list[np.ndarray]:
    disc = np.zeros((H, W), dtype=bool)
    disc[10:30, 40:60] = True
    vessel = np.zeros((H, W), dtype=bool)
    vessel[32, 5:75] = True
    vessel[5:60, 20] = True
    fovea = np.zeros((H, W), dtype=bool)
    fovea[45:52, 50:58] = True
    return [disc, vessel, fovea]


def _record(turns: list[list[int]] | None) -> dict:
    record = {
        "id": "eye",
        "image": "eye.png",
        "text": ["optic disc", "blood vessel", "fovea"],
        "mask": [[encode_mask_rle(m)] for m in _masks()],
    }
    if turns is not None:
        record["turns"] = turns
    return record


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "eye.png")
    return tmp_path


def _write(folder: Path, records: list[dict]) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config.fromfile(str(CONFIG))


def _dataset(cfg: Config, ann: Path, root: Path, **overrides) -> RefSegDataset:
    ds = dict(cfg.train_dataloader.dataset)
    ds.update(ann_file=str(ann), image_root=str(root), **overrides)
    return BUILDER.build(ds)


# --- the annotation format ----------------------------------------------------------------------------
def test_turns_are_optional_and_read_in_order():
    assert record_turns(_record(None)) == [(0,), (1,), (2,)]
    assert record_turns(_record([[1, 0], [2]])) == [(1, 0), (2,)]
    assert validate_record(_record([[1, 0], [2]]), 0, "a.json", (H, W)) == []


@pytest.mark.parametrize(
    "turns, message",
    [
        ([[0, 1]], r"object\(s\) \[2\] are in no turn"),
        ([[0, 1], [1, 2]], "object 1 is asked for in turn 0 and turn 1"),
        ([[0, 0, 1], [2]], "object 0 is asked for twice in this turn"),
        ([[0, 1, 2, 3]], r"object index 3 is out of range \(the record has 3 objects"),
        ([[0, 1], []], "turn 1 must be a non-empty list"),
        ([[0, "1"], [2]], "object index '1' is not an integer"),
        ([], "turns must be a non-empty list"),
        ([[0, True], [1, 2]], "object index True is not an integer"),
    ],
)
def test_bad_turns_are_reported_on_the_field(turns, message):
    problems = validate_record(_record(turns), 4, "a.json", (H, W))
    assert problems, turns
    assert all(p.field == "turns" and p.index == 4 for p in problems)
    assert any(__import__("re").search(message, p.message) for p in problems), [p.message for p in problems]


def test_join_texts():
    assert join_texts(["a"]) == "a"
    assert join_texts(["a", "b"]) == "a and b"
    assert join_texts(["a", "b", "c"]) == "a, b and c"


# --- the dataset --------------------------------------------------------------------------------------
def test_a_turn_of_two_objects_is_one_question_and_one_answer_with_two_seg(cfg, data):
    ann = _write(data, [_record([[0, 1], [2]])])
    ds = _dataset(cfg, ann, data, objects_per_image=None, random_templates=False)
    item = ds[0]
    tok = ds.tokenizer
    seg = tok.convert_tokens_to_ids("[SEG]")
    ids = item["input_ids"].tolist()
    assert ids.count(seg) == 3 == item["masks"].shape[0]
    masks = _masks()
    for k in range(3):
        assert torch.equal(item["masks"][k], torch.from_numpy(masks[k].astype(np.uint8)))
    assert item["texts"] == ["optic disc", "blood vessel", "fovea"]
    text = tok.decode(ids)
    assert "Please segment the optic disc and blood vessel." in text
    assert "Sure, the optic disc is [SEG] and the blood vessel is [SEG]." in text
    assert "Please segment the fovea." in text and "Sure, [SEG]." in text
    # every [SEG] is a supervised answer token
    labels = item["labels"].tolist()
    assert all(labels[i] == seg for i, t in enumerate(ids) if t == seg)
    # the question of a turn is not supervised
    assert labels.count(-100) > 0 and ds.lengths == [len(ids)]


def test_turn_order_decides_mask_order(cfg, data):
    ann = _write(data, [_record([[2, 0], [1]])])
    ds = _dataset(cfg, ann, data, objects_per_image=None, random_templates=False)
    item = ds[0]
    assert item["texts"] == ["fovea", "optic disc", "blood vessel"]
    full = decode_record_masks(_record(None), H, W)
    assert torch.equal(item["masks"], torch.from_numpy(full[[2, 0, 1]].astype(np.uint8)))
    assert "Sure, the fovea is [SEG] and the optic disc is [SEG]." in ds.tokenizer.decode(item["input_ids"])


def test_random_wording_and_sampling_count_turns(cfg, data):
    ann = _write(data, [_record([[0, 1, 2]])])
    ds = _dataset(cfg, ann, data, objects_per_image=2, repeats=6, random_templates=True)
    seg = ds.tokenizer.convert_tokens_to_ids("[SEG]")
    answers = set()
    for index in range(len(ds)):
        objects, wording, _ = ds.sample_plan(index)
        assert objects == [(0, 1, 2), (0, 1, 2)]  # one turn, repeated to objects_per_image turns
        assert all(len(w) == 3 for w in wording)
        item = ds[index]
        assert item["masks"].shape[0] == 6 == item["input_ids"].tolist().count(seg)
        assert len(item["input_ids"]) == ds.lengths[index]
        answers.add(ds.turn_text(("optic disc", "blood vessel", "fovea"), wording[0])[1])
    assert len(answers) > 1  # the wording is drawn
    assert ds[3]["input_ids"].tolist() == ds[3]["input_ids"].tolist()  # a pure function of the index


def test_records_without_turns_are_unchanged(cfg, data):
    """The same draws and ids as a record without the key (single-object turns are plain indices)."""
    plain = _dataset(cfg, _write(data, [_record(None)]), data, objects_per_image=2, repeats=4)
    explicit = _dataset(cfg, _write(data, [_record([[0], [1], [2]])]), data, objects_per_image=2, repeats=4)
    for index in range(4):
        assert plain.sample_plan(index)[:2] == explicit.sample_plan(index)[:2]
        assert all(isinstance(o, int) for o in plain.sample_plan(index)[0])
        assert torch.equal(plain[index]["input_ids"], explicit[index]["input_ids"])


def test_bad_templates_are_refused(cfg, data):
    ann = _write(data, [_record(None)])
    with pytest.raises(ValueError, match=r"must contain \{objects\} once and no \[SEG\]"):
        _dataset(cfg, ann, data, multi_answer_templates=("Sure, [SEG] {objects}.",))
    with pytest.raises(ValueError, match="must contain exactly one"):
        _dataset(cfg, ann, data, object_answer_templates=("the {text}",))


# --- training -------------------------------------------------------------------------------------------
def test_one_training_step_with_a_two_object_answer(cfg, data):
    """Finite losses; the mask decoder gets gradients; both [SEG] embeddings get one from their mask."""
    ann = _write(
        data,
        [{**_record([[0, 1]]), "text": ["optic disc", "blood vessel"], "mask": _record(None)["mask"][:2]}],
    )
    ds = _dataset(cfg, ann, data, objects_per_image=None, random_templates=False)
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    model.train()
    item = ds[0]
    assert item["masks"].shape[0] == 2
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["seg_embeds"] = output

    handle = model.text_hidden_fcs.register_forward_hook(keep)
    try:
        batch = sa2va_collate([item])
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
    finally:
        handle.remove()
    assert set(losses) >= {"loss_lm", "loss_mask", "loss_dice"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    seg_embeds = captured["seg_embeds"]
    assert seg_embeds.shape[0] == 2
    per_seg = seg_embeds.grad.abs().sum(dim=1)
    assert torch.isfinite(seg_embeds.grad).all() and (per_seg > 0).all(), per_seg
    decoder = model.grounding_encoder.sam2_model.sam_mask_decoder
    grads = [p.grad for p in decoder.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "the mask decoder got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_seg_count_mismatch_is_refused_by_the_model(cfg, data):
    """A sample whose answer has 2 [SEG] but 1 mask is an error, not a silent truncation."""
    ann = _write(
        data,
        [{**_record([[0, 1]]), "text": ["optic disc", "blood vessel"], "mask": _record(None)["mask"][:2]}],
    )
    ds = _dataset(cfg, ann, data, objects_per_image=None, random_templates=False)
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    item = ds[0]
    item["masks"] = item["masks"][:1]
    with pytest.raises(ValueError, match=r"2 \[SEG\] tokens in the sequence but 1 masks"):
        model(**model.data_preprocessor(sa2va_collate([item]), True), mode="loss")


# --- check_dataset ---------------------------------------------------------------------------------------
def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_dataset_reports_objects_and_questions(data, capsys):
    records = [_record(None), {**_record([[0, 1], [2]]), "id": "b"}, {**_record([[0, 1, 2]]), "id": "c"}]
    records[1]["mask"] = records[1]["mask"][::-1]  # different masks: not a duplicate record
    records[2]["text"] = ["disc", "vessel", "fovea"]
    ann = _write(data, records)
    tool = _load_tool("check_dataset")
    assert tool.main([str(ann), "--images", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "objects per record (objects: records): 3: 3" in out
    assert (
        "2 record(s) ask for several objects in one question; 6 questions, "
        "[SEG] per answer ([SEG]: answers): 1: 4, 2: 1, 3: 1" in out
    )
    assert out[-1].endswith("3 records, 9 objects, 0 problems")

    records[2]["turns"] = [[0, 1]]
    _write(data, records)
    assert tool.main([str(ann), "--images", str(data)]) == 1
    out = capsys.readouterr().out
    assert "record 2 ('eye.png'), field 'turns': object(s) [2] are in no turn" in out
    assert "1 record(s) ask for several objects in one question; 5 questions" in out  # the bad one left out


# --- evaluation (teacher-forced predict, as tools/test.py runs it) ----------------------------------------
def test_teacher_forced_evaluation_scores_every_object_of_a_turn(cfg, data):
    from projects.sa2va.evaluation.evaluate import build_eval_dataset
    from projects.sa2va.evaluation.seg_metric import SegMetric

    ann = _write(data, [_record([[0, 1], [2]])])
    eval_cfg = cfg.copy()
    eval_cfg.train_dataloader.dataset.update(objects_per_image=5, random_templates=True)
    ds = build_eval_dataset(eval_cfg, ann_file=str(ann), image_root=str(data))
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model).eval()
    batch = sa2va_collate([ds[0]])
    with torch.no_grad():
        outputs = model.val_step(batch)
    assert outputs[0]["probs"].shape == (3, H, W)
    assert outputs[0]["texts"] == ["optic disc", "blood vessel", "fovea"]
    metric = SegMetric()
    metric.process(batch, outputs)
    assert [r["image_id"] for r in metric.results] == ["eye.png"]
    keys = metric.results[0]["state"]["keys"]
    assert keys == ["eye.png|0|optic disc", "eye.png|1|blood vessel", "eye.png|2|fovea"]


@pytest.mark.parametrize(
    "answer, texts",
    [
        ("Sure, the optic disc is [SEG] and the blood vessel is [SEG].", ["optic disc", "blood vessel"]),
        (
            "the segmentation result of the optic disc is [SEG], the fovea is [SEG] and [SEG].",
            ["optic disc", "fovea", None],
        ),
        ("Sure, [SEG].", [None]),
        ("No object here.", []),
    ],
)
def test_answer_object_texts_names_each_seg(answer, texts):
    assert answer_object_texts(answer) == texts


def test_answer_object_texts_reads_every_generated_wording(cfg, data):
    ann = _write(data, [_record([[0, 1, 2]])])
    ds = _dataset(cfg, ann, data)
    texts = ("optic disc", "blood vessel", "fovea")
    for ai in range(len(ds.multi_answer_templates)):
        for oi in range(len(ds.object_answer_templates)):
            answer = ds.turn_text(texts, (0, ai, oi))[1]
            named = answer_object_texts(answer)
            assert named == (list(texts) if "{text}" in ds.object_answer_templates[oi] else [None] * 3), (
                answer
            )
