"""The import graph of the project stays a layered, acyclic one: ``common`` imports nothing above it,
``plots/`` imports only ``common``, a subproject imports only ``common`` and itself, and no module imports
itself back through others (read from the sources with ``ast``: nothing is imported)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "mamba_fl", "vit_sparse_fl", "lora_glue_fl", "llm_noniid", "plots")


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (``pkg.module``, or ``pkg`` for a package-level name)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def graph() -> dict[str, set[str]]:
    modules = {f"{p.parent.name}.{p.stem}": p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")
               if p.stem != "__init__"}
    return {m: {n if n in modules else ".".join(n.split(".")[:2]) for n in project_imports(p)} & modules.keys()
            for m, p in modules.items()}


def test_layers():
    bad = []
    for module, deps in graph().items():
        pkg = module.split(".")[0]
        allowed = {"common"} if pkg in ("common", "plots") else {"common", pkg}
        bad += [f"{module} imports {d}" for d in deps if d.split(".")[0] not in allowed | {pkg}]
    assert not bad, bad


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                return path + [m, d]
            if d not in state and (cycle := visit(d, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle)


def test_the_check_sees_an_import_and_a_circle(tmp_path, monkeypatch):
    """The checks can fail: a plots module importing a subproject, and a two-module circle, are both found."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "plots" / "p.py").write_text("from mamba_fl import model\n")
    (tmp_path / "mamba_fl" / "model.py").write_text("from mamba_fl.data import x\n")
    (tmp_path / "mamba_fl" / "data.py").write_text("import mamba_fl.model\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    g = graph()
    assert g["plots.p"] == {"mamba_fl.model"} and g["mamba_fl.model"] == {"mamba_fl.data"}
    with pytest.raises(AssertionError, match="plots.p imports mamba_fl.model"):
        test_layers()
    with pytest.raises(AssertionError, match="mamba_fl.data -> mamba_fl.model -> mamba_fl.data"):
        test_no_import_circle()
