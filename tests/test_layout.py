"""The one-way data flow of DESIGN.md, enforced on the source with `ast`:
no stage imports a later stage; only flows/ imports prefect; only cli.py imports typer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gristmill"
STAGES = ["storage", "embed", "selectors", "packing", "samplers"]
STDLIB_SHADOWS = {"types", "random", "io", "logging", "queue", "selectors_", "json", "typing",
                  "collections", "string", "select", "signal", "array", "copy", "math"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def stage_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and parts[0] in STAGES else None


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_imports_a_later_stage(path):
    stage = stage_of(path)
    if stage is None:
        return
    later = STAGES[STAGES.index(stage) + 1:] + ["flows", "train", "cli", "demo"]
    bad = [n for n in imports(path) if any(n == f"gristmill.{s}" or n.startswith(f"gristmill.{s}.")
                                           for s in later)]
    assert not bad, f"{path.name} ({stage}) imports later stages: {bad}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_prefect_only_in_flows_and_typer_only_in_cli(path):
    names = imports(path)
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] != "flows":
        assert not [n for n in names if n.split(".")[0] in {"prefect", "prefect_ray",
                                                            "prefect_dask"}], rel
    if rel != Path("cli.py"):
        assert not [n for n in names if n.split(".")[0] == "typer"], rel


def test_no_module_shadows_the_standard_library():
    shadowing = [p for p in modules() if p.stem in STDLIB_SHADOWS]
    assert not shadowing, shadowing


def test_every_stage_is_a_subpackage():
    for name in [*STAGES, "flows", "train"]:
        assert (PACKAGE / name / "__init__.py").is_file(), name
