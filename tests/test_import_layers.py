"""Imports inside ``projects/sa2va`` run one way: from a higher layer to the same or a lower one.

The layers (``docs/architecture.md`` shows the same table), highest first:

====  ==========================================================  ===========================================
rank  packages / modules of ``projects.sa2va``                    role
====  ==========================================================  ===========================================
4     ``configs``                                                 config files: name classes of every layer
3     ``app``, ``inference``, ``engine``, ``cli``                 applications: serve, predict, train
2     ``datasets``, ``evaluation``, ``checkpoint``                data in, metrics out, weights in and out
1     ``models``                                                  the networks and their losses
0     ``structures``, ``pixels``, ``digests``,                    shared types and pure functions
      ``special_tokens``, ``hf_folder``, ``tiling``,
      ``run_records``, package root
====  ==========================================================  ===========================================

A module may import a module of its own rank or of a lower rank. Every import counts: at module level,
inside a function (a "lazy" import), or under ``if TYPE_CHECKING:``. ``tools/`` (above everything) and
``tests/`` are outside the package and not checked.

The product (``projects/sa2va`` and ``tools/``) never imports the lab, the top-level ``bench`` package
(benchmarks, GPU scripts, profiling); ``bench`` imports the product.

``KNOWN_UPWARD`` lists the upward imports that are not fixed yet, each with the reason; the test fails on
any upward import not in it, and on an entry that no longer occurs (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "projects.sa2va"

LAYERS: dict[str, int] = {
    "configs": 4,
    "app": 3,
    "inference": 3,
    "engine": 3,
    "cli": 3,
    "datasets": 2,
    "evaluation": 2,
    "checkpoint": 2,
    "models": 1,
    "structures": 0,
    "pixels": 0,
    "digests": 0,
    "special_tokens": 0,
    "hf_folder": 0,
    "tiling": 0,
    "run_records": 0,
    "": 0,  # projects/sa2va/__init__.py
}

#: (importing module, imported module) -> why it is still there. Shrink it; never grow it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    """Rank of ``module`` (dotted, relative to :data:`PACKAGE`, e.g. ``'models.sa2va'``)."""
    top = module.split(".", 1)[0]
    if top not in LAYERS:
        raise KeyError(f"module {PACKAGE}.{module} is in no layer: add its package to LAYERS")
    return LAYERS[top]


def module_name(path: Path, package_dir: Path) -> str:
    """``.../projects/sa2va/models/sa2va.py`` -> ``'models.sa2va'`` (``__init__`` -> its package)."""
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, imported module relative to PACKAGE)`` for every import of a ``projects.sa2va`` module.

    ``module`` is the importing module's name relative to :data:`PACKAGE` (``''`` for the root).
    ``from X import name`` counts as an import of ``X.name`` when ``X`` is the package root (``name`` is
    then a module such as ``structures``), else of ``X``.
    """
    out: list[tuple[int, str]] = []
    own = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    base = own if is_package else own[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE:
                names = [f"{PACKAGE}.{a.name}" for a in node.names]
            else:
                names = [target]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                out.append((node.lineno, name[len(PACKAGE) + 1 :]))
    return out


def upward_imports(package_dir: Path) -> list[tuple[str, int, str, str]]:
    """Every upward import under ``package_dir``: ``(file, line, importing module, imported module)``."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(path, package_dir)
        rank = layer_of(module)
        for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if layer_of(target) > rank:
                found.append((str(path.relative_to(package_dir.parents[1])), line, module, target))
    return found


def test_no_new_upward_import() -> None:
    found = upward_imports(ROOT / "projects" / "sa2va")
    new = [
        f"{f}:{line}: {m} imports {t} (rank {layer_of(m)} -> {layer_of(t)})"
        for f, line, m, t in found
        if (m, t) not in KNOWN_UPWARD
    ]
    assert not new, "upward imports (see tests/test_import_layers.py for the layers):\n" + "\n".join(new)
    stale = sorted(set(KNOWN_UPWARD) - {(m, t) for _, _, m, t in found})
    assert not stale, f"KNOWN_UPWARD entries that no longer occur (remove them): {stale}"


#: The lab's top-level package, which the product must not import.
LAB = "bench"


def lab_imports(paths: list[Path]) -> list[tuple[str, int, str]]:
    """``(file, line, module)`` for every import of :data:`LAB` (``bench`` or ``bench.*``) in ``paths``.

    Only absolute imports can reach the top-level ``bench`` from ``projects/sa2va`` or ``tools/``.
    """
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [(str(path), node.lineno, n) for n in names if n == LAB or n.startswith(LAB + ".")]
    return found


def test_product_never_imports_the_lab() -> None:
    paths = sorted((ROOT / "projects" / "sa2va").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py"))
    assert len(paths) > 50, "the scan found too few files to mean anything"
    found = [f"{Path(f).relative_to(ROOT)}:{line}: imports {name}" for f, line, name in lab_imports(paths)]
    assert not found, "the product imports the lab (bench/):\n" + "\n".join(found)


def test_lab_check_catches_planted_imports(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "import bench.harness.speed as hb\nimport benchmark\n")
    _write(tmp_path, "b.py", "def f():\n    from bench import harness\n    from .bench import x\n")
    found = lab_imports([tmp_path / "a.py", tmp_path / "b.py"])
    assert [(Path(f).name, line, n) for f, line, n in found] == [
        ("a.py", 1, "bench.harness.speed"),
        ("b.py", 2, "bench"),
    ]


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_catches_planted_upward_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "projects" / "sa2va"
    _write(pkg, "__init__.py", "")
    _write(pkg, "structures.py", "")
    _write(pkg, "models/__init__.py", "")
    _write(pkg, "engine/__init__.py", "")
    _write(pkg, "engine/builder.py", "from ..models import sa2va\n")  # downward: fine
    _write(pkg, "datasets/__init__.py", "")
    _write(pkg, "datasets/collate.py", "from .. import structures\nfrom ..models.sa2va import X\n")  # fine
    _write(
        pkg,
        "models/sa2va.py",
        "from typing import TYPE_CHECKING\n"
        "from ..structures import Batch\n"
        "if TYPE_CHECKING:\n"
        "    from ..datasets.collate import sa2va_collate\n"  # line 4: upward, type-only
        "def load():\n"
        "    from projects.sa2va.checkpoint.safe_load import load\n"  # line 6: upward, lazy
        "    import projects.sa2va.engine.builder\n",  # line 7: upward, absolute
    )
    found = upward_imports(pkg)
    assert [(f, line, t) for f, line, _, t in found] == [
        ("projects/sa2va/models/sa2va.py", 4, "datasets.collate"),
        ("projects/sa2va/models/sa2va.py", 6, "checkpoint.safe_load"),
        ("projects/sa2va/models/sa2va.py", 7, "engine.builder"),
    ]


def test_checker_names_unknown_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "projects" / "sa2va"
    _write(pkg, "__init__.py", "")
    _write(pkg, "newpkg/__init__.py", "")
    try:
        upward_imports(pkg)
    except KeyError as e:
        assert "projects.sa2va.newpkg is in no layer" in str(e)
    else:
        raise AssertionError("a package outside LAYERS was accepted")


if __name__ == "__main__":
    for f, line, m, t in upward_imports(ROOT / "projects" / "sa2va"):
        print(f"{f}:{line}: {m} -> {t}")
