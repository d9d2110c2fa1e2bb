"""A module first imported while ``torch.nn.init`` is patched must not keep the no-op after the window.

The bug this guards: ``sam2`` 1.1.0 ``sam2/modeling/sam2_base.py`` runs ``from torch.nn.init import
trunc_normal_``, and hydra imports that module the first time a SAM2 yaml is instantiated. When the first
build of a process skipped the initialisers (an HF export, ``no_weight_init``), ``sam2_base`` kept the
no-op, and every later random-init build in that process left ``no_mem_embed`` / ``no_mem_pos_enc`` /
``maskmem_tpos_enc`` / ``no_obj_ptr`` at zero and drew its later tensors (the whole mask decoder, the
LoRA factors, ``text_hidden_fcs``) from a shifted random stream. It made
``tests/inference/test_predict_tool.py::test_predict_tool_end_to_end`` fail when it ran in the process of
a test that had built from an export in-process.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from projects.sa2va.models.fast_init import no_weight_init, torch_init_disabled, weight_init_restored

ROOT = Path(__file__).resolve().parents[2]

LATE_MODULE = """
from torch.nn.init import normal_ as draw_normal
from torch.nn.init import trunc_normal_
"""


def _late_module(tmp_path: Path, monkeypatch, name: str):
    (tmp_path / f"{name}.py").write_text(LATE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return lambda: importlib.import_module(name)


def _is_noop(fn) -> bool:
    t = torch.zeros(4)
    fn(t)
    return bool((t == 0).all())


def test_module_imported_inside_the_window_gets_the_real_initialisers_back(tmp_path, monkeypatch):
    load = _late_module(tmp_path, monkeypatch, "late_init_user_a")
    with no_weight_init():
        mod = load()
        assert _is_noop(mod.trunc_normal_) and _is_noop(mod.draw_normal)  # skipped inside, as intended
    assert mod.trunc_normal_ is nn.init.trunc_normal_
    assert mod.draw_normal is nn.init.normal_  # bound under another name: still the right initialiser
    assert not _is_noop(mod.trunc_normal_)


def test_nested_windows_repair_on_the_outermost_exit(tmp_path, monkeypatch):
    load = _late_module(tmp_path, monkeypatch, "late_init_user_b")
    with torch_init_disabled():
        with torch_init_disabled():
            mod = load()
        assert _is_noop(mod.trunc_normal_)  # the enclosing window still skips initialisers
    assert mod.trunc_normal_ is nn.init.trunc_normal_
    load_c = _late_module(tmp_path, monkeypatch, "late_init_user_c")
    with no_weight_init(), weight_init_restored():
        with torch_init_disabled():
            mod_c = load_c()
        assert mod_c.trunc_normal_ is nn.init.trunc_normal_  # the restored window initialises
    assert mod_c.trunc_normal_ is nn.init.trunc_normal_


# Child process: optionally build the tiny SAM2 once without initialisers (the first SAM2 build of the
# process, as building from an HF export is), then build it seeded as a random-init config does.
CHILD = r"""
import sys
import torch
from mmengine.config import Config
from projects.sa2va.models.fast_init import no_weight_init
from projects.sa2va.models.sam2_grounding import SAM2GroundingEncoder
from tests.tiny import TINY_MODEL_CFG

overrides = Config.fromfile(str(TINY_MODEL_CFG)).tiny_sam2_overrides.to_dict()
if sys.argv[1] == "after_skip":
    assert "sam2.modeling.sam2_base" not in sys.modules
    with no_weight_init():
        SAM2GroundingEncoder(overrides=overrides)
torch.manual_seed(0)
enc = SAM2GroundingEncoder(overrides=overrides)
torch.save({k: v.clone() for k, v in enc.state_dict().items()}, sys.argv[2])
"""


def _child_build(mode: str, out: Path) -> dict[str, torch.Tensor]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_sam2_built_after_a_skip_init_build_equals_a_fresh_process_build(tmp_path):
    fresh = _child_build("fresh", tmp_path / "fresh.pt")
    after = _child_build("after_skip", tmp_path / "after.pt")
    assert fresh.keys() == after.keys()
    for name in ("sam2_model.no_mem_embed", "sam2_model.no_mem_pos_enc", "sam2_model.maskmem_tpos_enc"):
        assert fresh[name].abs().sum() > 0, f"{name} was not drawn in a fresh process"
    differ = [k for k in fresh if not torch.equal(fresh[k], after[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"
